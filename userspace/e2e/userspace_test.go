package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/isolate"
	"github.com/svcproxy/svcproxy/e2e/manifest"
	"github.com/svcproxy/svcproxy/e2e/suite"
	"github.com/svcproxy/svcproxy/e2e/topology"
	"github.com/svcproxy/svcproxy/e2e/traffic"
	"github.com/svcproxy/svcproxy/e2e/whoami"
)

// Test conventions (address plan of e2e/topology):
//
//	node1 172.30.0.11  runs svcproxy --mode=userspace; pods: client 10.244.1.10, web1 10.244.1.11
//	node2 172.30.0.12  pods: web2 10.244.2.10, web3 10.244.2.11 (no proxy: only node1's clients are tested)
//	service web  10.96.5.1:9000/TCP -> 80 on web1..3
//	service dns  10.96.5.2:53/UDP   -> 80 on web1..3
//
// The whoami pods serve HTTP on TCP 80 and answer on UDP 80.

// TestMain moves the test binary into a throwaway network namespace first,
// so nothing it does can reach the host's own.
func TestMain(m *testing.M) {
	isolate.MustIsolate()
	os.Exit(m.Run())
}

const (
	webURL  = "http://10.96.5.1:9000/"
	dnsAddr = "10.96.5.2:53"
)

var webPods = []string{"web1", "web2", "web3"}

func endpoints() []manifest.Endpoint {
	return []manifest.Endpoint{
		{IP: topology.PodIP(1, 1).String(), Node: "node1"},
		{IP: topology.PodIP(2, 0).String(), Node: "node2"},
		{IP: topology.PodIP(2, 1).String(), Node: "node2"},
	}
}

func manifests() string {
	return manifest.Service{Name: "web", ClusterIP: "10.96.5.1", Ports: []manifest.Port{{Name: "http", Port: 9000, Target: "80"}}}.YAML() +
		manifest.Slice{Name: "web-1", Service: "web", Ports: []manifest.SlicePort{{Name: "http", Port: 80}}, Endpoints: endpoints()}.YAML() +
		manifest.Service{Name: "dns", ClusterIP: "10.96.5.2", Ports: []manifest.Port{{Name: "dns", Port: 53, Target: "80", Protocol: "UDP"}}}.YAML() +
		manifest.Slice{Name: "dns-1", Service: "dns", Ports: []manifest.SlicePort{{Name: "dns", Port: 80, Protocol: "UDP"}}, Endpoints: endpoints()}.YAML()
}

// TestUserspaceMode runs the userspace-specific checks in order on one
// cluster: they share the proxy, and the last ones stop a pod and the proxy.
func TestUserspaceMode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := suite.BuildBinary(t)
	c, err := topology.Build(ctx, topology.Spec{Nodes: []topology.NodeSpec{
		{Name: "node1", Pods: []string{"client", "web1"}},
		{Name: "node2", Pods: []string{"web2", "web3"}},
	}})
	if err != nil {
		t.Fatalf("build cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.LogTails(40))
			if out, err := c.Node("node1").Run(context.Background(), "iptables-save"); err == nil {
				t.Logf("=== node1 iptables-save ===\n%s", out)
			}
		}
		if err := c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
	})
	whoamis := map[string]*topology.Proc{}
	for _, pod := range webPods {
		p, err := c.Pod(pod).Start(bin, "whoami", "--name", pod, "--tcp", "80", "--udp", "80")
		if err != nil {
			t.Fatalf("start whoami in %s: %v", pod, err)
		}
		whoamis[pod] = p
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "services.yaml"), []byte(manifests()), 0o644); err != nil {
		t.Fatal(err)
	}
	node := c.Node("node1")
	proxy, err := node.Start(bin, "--mode=userspace", "--source=file:"+dir, "--hostname-override=node1",
		"--cluster-cidr="+topology.ClusterCIDR, "--min-sync-period=100ms", "-v=2")
	if err != nil {
		t.Fatalf("start svcproxy: %v", err)
	}
	client := c.Pod("client")
	eventually(t, "the service answers from the client pod", func() error {
		_, err := traffic.Fetch(ctx, client.Dial, webURL, 2*time.Second)
		return err
	})
	eventually(t, "the UDP service answers from the client pod", func() error {
		if r := traffic.UDP(ctx, client.Dial, dnsAddr, 1, 2*time.Second); r.Errors > 0 {
			return r.FirstError
		}
		return nil
	})

	t.Run("cluster IP spread", func(t *testing.T) {
		for _, from := range []*topology.Host{&client.Host, &node.Host} {
			r := traffic.HTTP(ctx, from.Dial, webURL, 300, 2*time.Second)
			fair(t, from.Name, r, 300)
		}
	})

	t.Run("UDP spread", func(t *testing.T) {
		// From the node the redirected destination is 127.0.0.1 while the
		// client's address is the node's: the reply reaches it only if it
		// leaves from 127.0.0.1 (IP_PKTINFO).
		for _, from := range []*topology.Host{&client.Host, &node.Host} {
			r := traffic.UDP(ctx, from.Dial, dnsAddr, 300, 2*time.Second)
			fair(t, from.Name, r, 300)
		}
	})

	t.Run("100 MB through the proxy arrives intact", func(t *testing.T) {
		const size = 100 << 20
		hc := &http.Client{Transport: &http.Transport{DialContext: client.Dial, DisableKeepAlives: true}}
		resp, err := hc.Get(webURL + "data?size=100&unit=MB")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %s", resp.Status)
		}
		n, err := whoami.VerifyPattern(resp.Body, size)
		if err != nil {
			t.Fatalf("after %d bytes: %v", n, err)
		}
	})

	t.Run("explain from another process", func(t *testing.T) {
		out, err := node.Run(ctx, bin, "explain", "--mode=userspace", "10.96.5.1:9000")
		if err != nil {
			t.Fatalf("explain: %v\n%s", err, out)
		}
		for _, want := range []string{
			// iptables-save's order: -d, -p, then the matches.
			"-A SVCP-PORTALS-CONTAINER -d 10.96.5.1/32 -p tcp",
			"-A SVCP-PORTALS-HOST -d 10.96.5.1/32 -p tcp",
			"--dport 9000 -j REDIRECT --to-ports",
			fmt.Sprintf("owned by pid %d", proxy.Pid),
			"default/web:http (cluster traffic)",
			"endpoints (3): 10.244.1.11:80, 10.244.2.10:80, 10.244.2.11:80",
		} {
			if !strings.Contains(string(out), want) {
				t.Errorf("explain output lacks %q:\n%s", want, out)
			}
		}
		out, err = node.Run(ctx, bin, "explain", "--mode=userspace", "--protocol=udp", dnsAddr)
		if err != nil || !strings.Contains(string(out), "-m udp --dport 53 -j REDIRECT") ||
			!strings.Contains(string(out), "default/dns:dns (cluster traffic)") {
			t.Errorf("explain UDP: %v\n%s", err, out)
		}
	})

	t.Run("a pod that stopped accepting costs a retry, not a failed request", func(t *testing.T) {
		if err := whoamis["web3"].Stop(); err != nil {
			t.Fatal(err)
		}
		// The endpoint stays in the slice: only the proxy's retry saves
		// the requests that the round robin sends to web3.
		for _, from := range []*topology.Host{&client.Host, &node.Host} {
			r := traffic.HTTP(ctx, from.Dial, webURL, 300, 5*time.Second)
			if r.Errors > 0 || r.Answered() != 300 {
				t.Fatalf("from %s: %d of 300 answered, %d failed, first: %v", from.Name, r.Answered(), r.Errors, r.FirstError)
			}
			if r.Counts["web3"] != 0 || r.Counts["web1"] == 0 || r.Counts["web2"] == 0 {
				t.Fatalf("from %s: answers %v, want web1 and web2 only", from.Name, r.Counts)
			}
		}
	})

	t.Run("a pod that drops connection attempts costs a connect timeout", func(t *testing.T) {
		// web2 now drops SYNs (in its own namespace): each attempt on it
		// waits for the proxy's 1 s connect timeout, then goes to web1.
		if out, err := c.Pod("web2").Run(ctx, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "80", "-j", "DROP"); err != nil {
			t.Fatalf("blackhole web2: %v\n%s", err, out)
		}
		r := traffic.HTTP(ctx, client.Dial, webURL, 6, 5*time.Second)
		if r.Errors > 0 || r.Counts["web1"] != 6 {
			t.Fatalf("answers %v, %d failed, first: %v; want all 6 from web1", r.Counts, r.Errors, r.FirstError)
		}
	})

	t.Run("cleanup removes every rule", func(t *testing.T) {
		if err := proxy.Stop(); err != nil {
			t.Fatal(err)
		}
		// The rules outlive the proxy; explain sees nobody behind them,
		// and a proxy stopped by SIGTERM removed its state file.
		out, err := node.Run(ctx, bin, "explain", "--mode=userspace", "10.96.5.1:9000")
		if err != nil || !strings.Contains(string(out), "NO SOCKET LISTENS") || !strings.Contains(string(out), "no state file") {
			t.Errorf("explain with the proxy stopped: %v\n%s", err, out)
		}
		if out, err := node.Run(ctx, bin, "cleanup"); err != nil {
			t.Fatalf("cleanup: %v\n%s", err, out)
		}
		for _, table := range []string{"nat", "filter"} {
			out, err := node.Run(ctx, "iptables-save", "-t", table)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(out), "SVCP-") {
				t.Errorf("after cleanup the %s table still has svcproxy rules:\n%s", table, out)
			}
		}
	})
}

// fair checks that n requests were all answered and spread over the web
// pods as round robin spreads them: equally.
func fair(t *testing.T, from string, r traffic.Result, n int) {
	t.Helper()
	if err := r.Fair(webPods, n); err != nil {
		var sb strings.Builder
		_ = r.Table(&sb, webPods)
		t.Fatalf("from %s: %v\n%s", from, err, sb.String())
	}
}

// eventually retries check until it succeeds, failing after 20 s (a guard
// against a proxy that never comes up, not a timing assertion).
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = check(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not true within 20s: %v", what, err)
}
