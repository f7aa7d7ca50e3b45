package lab

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/isolate"
	"github.com/svcproxy/svcproxy/e2e/suite"
	"github.com/svcproxy/svcproxy/e2e/topology"
)

func TestMain(m *testing.M) {
	isolate.MustIsolate()
	os.Exit(m.Run())
}

// TestClassicLab runs the default lab in every mode that runs on this
// host and checks what it teaches: the spread over the three webpods, the
// same rules on every node, the explain output, and a clean teardown.
func TestClassicLab(t *testing.T) {
	bin := suite.BuildBinary(t)
	for _, mode := range []string{"iptables", "userspace"} {
		t.Run(mode, func(t *testing.T) {
			var out bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := Run(ctx, Options{Mode: mode, Binary: bin, Out: &out}); err != nil {
				t.Fatalf("lab: %v\n%s", err, out.String())
			}
			report := out.String()
			for _, want := range []string{
				"Hostname: webpod-", "1000 requests from net-pod", "webpod-1", "webpod-2", "webpod-3",
				"Every node holds the same rules", "svcproxy explain", "Hop by hop", "namespaces removed",
			} {
				if !strings.Contains(report, want) {
					t.Errorf("the lab's report lacks %q:\n%s", want, report)
				}
			}
			if left, _ := filepath.Glob("/run/netns/" + Prefix + "-*"); len(left) > 0 {
				t.Errorf("namespaces left behind: %v", left)
			}
		})
	}
}

// TestKeepAndDown leaves a lab running with Keep and removes it with Down.
func TestKeepAndDown(t *testing.T) {
	bin := suite.BuildBinary(t)
	var out bytes.Buffer
	if err := Run(context.Background(), Options{Mode: "iptables", Binary: bin, Out: &out, Keep: true}); err != nil {
		t.Fatalf("lab: %v\n%s", err, out.String())
	}
	t.Cleanup(func() { _ = Down() })
	if !strings.Contains(out.String(), "ip netns exec "+topology.NamespaceName(Prefix, "net-pod")+" curl") {
		t.Errorf("--keep does not say how to enter the lab:\n%s", out.String())
	}
	if left, _ := filepath.Glob("/run/netns/" + Prefix + "-*"); len(left) == 0 {
		t.Fatalf("--keep left no namespaces")
	}
	if err := Down(); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob("/run/netns/" + Prefix + "-*"); len(left) > 0 {
		t.Errorf("Down left namespaces: %v", left)
	}
}

func TestScenarioValidation(t *testing.T) {
	tests := []struct {
		name, yaml, wantErr string
	}{
		{"unknown field", "nodes: [{name: a, pods: [c]}]\nclient: c\nbogus: 1\n", "bogus"},
		{"client not a pod", "nodes: [{name: a, pods: [p]}]\nclient: c\nservices: [{name: s, clusterIP: 10.96.0.1, port: 80, targetPort: 80, pods: [p]}]\n", "client"},
		{"service pod missing", "nodes: [{name: a, pods: [c]}]\nclient: c\nservices: [{name: s, clusterIP: 10.96.0.1, port: 80, targetPort: 80, pods: [x]}]\n", "pod \"x\""},
		{"bad port", "nodes: [{name: a, pods: [c, p]}]\nclient: c\nservices: [{name: s, clusterIP: 10.96.0.1, port: 0, targetPort: 80, pods: [p]}]\n", "1-65535"},
		{"valid", "nodes: [{name: a, pods: [c, p]}]\nclient: c\nservices: [{name: s, clusterIP: 10.96.0.1, port: 80, targetPort: 80, pods: [p]}]\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseScenario([]byte(tt.yaml), tt.name)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one mentioning %q", err, tt.wantErr)
			}
		})
	}
	if _, err := Classic(); err != nil {
		t.Fatalf("the classic scenario: %v", err)
	}
}
