// Package suite is svcproxy's mode-independent end-to-end suite: a table of
// scenarios, each a set of Services and EndpointSlices plus the traffic that
// must follow from them, run against real kernel state (iptables in network
// namespaces, IPVS in the VM) with real TCP and UDP traffic counted per pod.
// Every mode runs the same table: Run(t, Options{Mode: "iptables"}).
//
// Test conventions (see e2e/topology for the address plan):
//
//	node1 172.30.0.11  pods: client 10.244.1.10, web1 10.244.1.11
//	node2 172.30.0.12  pods: web2 10.244.2.10
//	node3 172.30.0.13  pods: web3 10.244.3.10
//	external client    172.30.0.100 (routes services and 203.0.113.0/24 via node1)
//	cluster IPs        10.96.1.x, one per scenario
//	external/LB IPs    203.0.113.x
//
// The web pods run whoami on TCP 80 and 81 and UDP 80; web1 and web2 also
// on 8080, web3 on 8081 (so a named targetPort that resolves differently per
// pod is visible in the traffic).
package suite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/topology"
	"github.com/svcproxy/svcproxy/e2e/traffic"
)

// Options selects the mode under test.
type Options struct {
	// Mode is passed to svcproxy --mode.
	Mode string
	// Binary is the svcproxy binary; empty means build it.
	Binary string
	// ExtraArgs are added to every svcproxy command line.
	ExtraArgs []string
}

// env is what a scenario sees: the cluster, the manifest directory every
// node's svcproxy watches, and helpers.
type env struct {
	t       *testing.T
	ctx     context.Context
	cluster *topology.Cluster
	dir     string
	opts    Options
}

// WebPods are the pods serving every scenario's services.
var WebPods = []string{"web1", "web2", "web3"}

// Run builds the cluster, starts svcproxy in opts.Mode on every node and
// runs every scenario as a subtest.
func Run(t *testing.T, opts Options) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if opts.Binary == "" {
		opts.Binary = BuildBinary(t)
	}
	cluster, err := topology.Build(ctx, topology.Spec{
		Nodes: []topology.NodeSpec{
			{Name: "node1", Pods: []string{"client", "web1"}},
			{Name: "node2", Pods: []string{"web2"}},
			{Name: "node3", Pods: []string{"web3"}},
		},
		External: true,
	})
	if err != nil {
		t.Fatalf("build cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(cluster.LogTails(40))
			if out, err := cluster.Node("node1").Run(context.Background(), "iptables-save"); err == nil {
				t.Logf("=== node1 iptables-save ===\n%s", out)
			}
		}
		if err := cluster.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
	})
	e := &env{t: t, ctx: ctx, cluster: cluster, dir: t.TempDir(), opts: opts}
	for _, pod := range WebPods {
		ports := "80,81,8080"
		if pod == "web3" {
			ports = "80,81,8081"
		}
		if _, err := cluster.Pod(pod).Start(opts.Binary, "whoami", "--name", pod, "--tcp", ports, "--udp", "80"); err != nil {
			t.Fatalf("start whoami: %v", err)
		}
	}
	for _, node := range cluster.Nodes {
		args := append([]string{
			"--mode=" + opts.Mode, "--source=file:" + e.dir, "--hostname-override=" + node.Name,
			"--cluster-cidr=" + topology.ClusterCIDR, "--min-sync-period=100ms", "-v=2",
		}, opts.ExtraArgs...)
		if _, err := node.Start(opts.Binary, args...); err != nil {
			t.Fatalf("start svcproxy on %s: %v", node.Name, err)
		}
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			se := *e
			se.t = t
			file := filepath.Join(e.dir, sc.name+".yaml")
			if err := os.WriteFile(file, []byte(sc.manifests), 0o644); err != nil {
				t.Fatal(err)
			}
			defer os.Remove(file)
			sc.check(&se)
		})
	}
}

// BuildBinary builds ./cmd/svcproxy into a temporary directory.
func BuildBinary(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	bin := filepath.Join(t.TempDir(), "svcproxy")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/svcproxy")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build svcproxy: %v\n%s", err, out)
	}
	return bin
}

// host returns a named host: a pod, a node or "external".
func (e *env) host(name string) *topology.Host {
	h := e.cluster.Host(name)
	if h == nil {
		e.t.Fatalf("no host %q", name)
	}
	return h
}

// http sends n requests from a host, each on a new connection.
func (e *env) http(from, url string, n int) traffic.Result {
	return traffic.HTTP(e.ctx, e.host(from).Dial, url, n, 2*time.Second)
}

// udp sends n datagrams from a host, each from a new socket.
func (e *env) udp(from, addr string, n int) traffic.Result {
	return traffic.UDP(e.ctx, e.host(from).Dial, addr, n, 2*time.Second)
}

// eventually retries check until it succeeds or the deadline passes.
func (e *env) eventually(what string, check func() error) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = check(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.t.Fatalf("%s: not true within 20s: %v", what, err)
}

// reachable waits until url answers from a host.
func (e *env) reachable(from, url string) {
	e.t.Helper()
	e.eventually(fmt.Sprintf("%s reaches %s", from, url), func() error {
		r := e.http(from, url, 3)
		if r.Errors > 0 {
			return r.FirstError
		}
		return nil
	})
}

// update rewrites the scenario's manifest file.
func (e *env) update(name, manifests string) {
	e.t.Helper()
	if err := os.WriteFile(filepath.Join(e.dir, name+".yaml"), []byte(manifests), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// fair checks that a result spread over pods as a random choice would.
func (e *env) fair(r traffic.Result, pods []string, n int) {
	e.t.Helper()
	if err := r.Fair(pods, n); err != nil {
		var sb strings.Builder
		_ = r.Table(&sb, pods)
		e.t.Fatalf("%v\n%s", err, sb.String())
	}
}

// only checks that every answer came from one of pods and none failed.
func (e *env) only(r traffic.Result, pods ...string) {
	e.t.Helper()
	if r.Errors > 0 {
		e.t.Fatalf("%d requests failed, first: %v", r.Errors, r.FirstError)
	}
	for name, n := range r.Counts {
		ok := false
		for _, p := range pods {
			ok = ok || p == name
		}
		if !ok {
			e.t.Fatalf("%d answers from %s, want only %v (counts %v)", n, name, pods, r.Counts)
		}
	}
}

// isRefused reports whether err is a refused connection.
func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
