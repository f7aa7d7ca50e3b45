package topology

// Test conventions: every test binary runs in a throwaway network namespace
// (isolate.MustIsolate in TestMain). Clusters use the package's address
// plan: nodes 172.30.0.(10+i), pods 10.244.i.(10+j), external client
// 172.30.0.100. whoami servers run in-process inside the pod namespaces on
// port 80 (TCP and UDP).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/isolate"
	"github.com/svcproxy/svcproxy/e2e/traffic"
	"github.com/svcproxy/svcproxy/e2e/whoami"
)

func TestMain(m *testing.M) {
	isolate.MustIsolate()
	os.Exit(m.Run())
}

func TestAddressPlan(t *testing.T) {
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"node 1", NodeIP(1).String(), "172.30.0.11"},
		{"last node", NodeIP(MaxNodes).String(), "172.30.0.99"},
		{"pod 0 of node 1", PodIP(1, 0).String(), "10.244.1.10"},
		{"last pod of node 3", PodIP(3, MaxPodsPerNode-1).String(), "10.244.3.254"},
		{"pod CIDR of node 2", PodCIDR(2).String(), "10.244.2.0/24"},
		{"namespace name", NamespaceName("svcp0001", "node1"), "svcp0001-node1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %s, want %s", tt.got, tt.want)
			}
		})
	}
}

func TestSpecValidate(t *testing.T) {
	tests := []struct {
		name    string
		spec    Spec
		wantErr string
	}{
		{"ok", Spec{Nodes: []NodeSpec{{Name: "node1", Pods: []string{"a", "b"}}}}, ""},
		{"no nodes", Spec{}, "at least one node"},
		{"duplicate pod", Spec{Nodes: []NodeSpec{{Name: "n1", Pods: []string{"a"}}, {Name: "n2", Pods: []string{"a"}}}}, "used twice"},
		{"pod named like node", Spec{Nodes: []NodeSpec{{Name: "n1", Pods: []string{"n1"}}}}, "used twice"},
		{"reserved name", Spec{Nodes: []NodeSpec{{Name: "fabric"}}}, "reserved"},
		{"slash in name", Spec{Nodes: []NodeSpec{{Name: "a/b"}}}, "invalid node name"},
		{"bad prefix", Spec{Prefix: "../x", Nodes: []NodeSpec{{Name: "n1"}}}, "invalid prefix"},
		{"too many pods", Spec{Nodes: []NodeSpec{{Name: "n1", Pods: make([]string, MaxPodsPerNode+1)}}}, "address plan holds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("validate() = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestHostIfName(t *testing.T) {
	used := map[string]bool{} // one node: names must stay distinct
	tests := []struct {
		pod   string
		index int
		want  string
	}{
		{"web", 0, "veth-web"},
		{"webpod-1", 1, "veth-webpod-1"},
		{"a-very-long-pod-name", 2, "veth70e18eda"},
		{"web", 3, "veth0fd9bc91"}, // "veth-web" is taken: the hash
		{"web", 4, "vethp4"},       // both are taken: the index
	}
	for _, tt := range tests {
		if got := hostIfName(tt.pod, tt.index, used); got != tt.want {
			t.Errorf("hostIfName(%q, %d) = %q, want %q", tt.pod, tt.index, got, tt.want)
		}
	}
}

// leftNamespaces returns the entries of /run/netns with the prefix.
func leftNamespaces(t *testing.T, prefix string) []string {
	t.Helper()
	names, err := namespacesWithPrefix(prefix)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// startWhoami serves whoami on port 80 (TCP and UDP) inside each pod and
// returns a function that waits for the servers once ctx is done.
func startWhoami(t *testing.T, ctx context.Context, pods []*Pod) (wait func()) {
	t.Helper()
	var waits []func() error
	for _, p := range pods {
		var s *whoami.Server
		err := p.Do(func() error {
			var err error
			s, err = whoami.Listen(whoami.Config{Name: p.Name, TCPPorts: []int{80}, UDPPorts: []int{80}})
			return err
		})
		if err != nil {
			t.Fatalf("starting whoami in %s: %v", p.Name, err)
		}
		waits = append(waits, s.Start(ctx))
	}
	return func() {
		for _, w := range waits {
			if err := w(); err != nil {
				t.Errorf("whoami: %v", err)
			}
		}
	}
}

func TestClusterTraffic(t *testing.T) {
	ctx := context.Background()
	c, err := Build(ctx, Spec{
		Nodes:    []NodeSpec{{Name: "node1", Pods: []string{"pod-a"}}, {Name: "node2", Pods: []string{"pod-b"}}},
		External: true,
	})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	defer c.Close()
	if !strings.HasPrefix(c.Prefix, "svcp") || len(c.Prefix) != 8 {
		t.Errorf("prefix %q, want svcpXXXX", c.Prefix)
	}

	srvCtx, stopServers := context.WithCancel(ctx)
	waitServers := startWhoami(t, srvCtx, c.Pods)

	flows := []struct {
		from  *Host
		to    *Pod
		proto string
	}{
		{&c.Pod("pod-a").Host, c.Pod("pod-b"), "tcp"},
		{&c.Pod("pod-a").Host, c.Pod("pod-b"), "udp"},
		{&c.Pod("pod-b").Host, c.Pod("pod-a"), "tcp"},
		{c.External, c.Pod("pod-a"), "tcp"},
		{c.External, c.Pod("pod-b"), "udp"},
		{&c.Node("node2").Host, c.Pod("pod-b"), "tcp"},
		{&c.Node("node1").Host, c.Pod("pod-b"), "udp"},
		{&c.Node("node2").Host, c.Pod("pod-a"), "tcp"},
	}
	for _, f := range flows {
		t.Run(fmt.Sprintf("%s to %s over %s", f.from.Name, f.to.Name, f.proto), func(t *testing.T) {
			const n = 3
			var r traffic.Result
			addr := f.to.IP.String() + ":80"
			if f.proto == "tcp" {
				r = traffic.HTTP(ctx, f.from.Dial, "http://"+addr+"/", n, 5*time.Second)
			} else {
				r = traffic.UDP(ctx, f.from.Dial, addr, n, 5*time.Second)
			}
			if r.Errors != 0 || r.Counts[f.to.Name] != n {
				t.Fatalf("counts %v, %d errors (first: %v), want %d answers from %s", r.Counts, r.Errors, r.FirstError, n, f.to.Name)
			}
		})
	}

	t.Run("whoami sees the client's own address", func(t *testing.T) {
		conn, err := c.Pod("pod-a").DialFrom(c.Pod("pod-a").IP)(ctx, "udp", c.Pod("pod-b").IP.String()+":80")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write([]byte("hi")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 512)
		if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		k, err := conn.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		want := "RemoteAddr: " + conn.LocalAddr().String()
		if !strings.Contains(string(buf[:k]), want) {
			t.Errorf("answer %q does not contain %q", buf[:k], want)
		}
	})

	t.Run("sysctls", func(t *testing.T) {
		tests := []struct {
			host *Host
			key  string
			want string
			// absentOK: the key only exists with br_netfilter (loaded on
			// the host, not in the VM), whose absence means the same.
			absentOK bool
		}{
			{&c.Node("node1").Host, "net.ipv4.ip_forward", "1", false},
			{&c.Node("node2").Host, "net.ipv4.conf.all.rp_filter", "0", false},
			{&c.Node("node2").Host, "net.ipv4.conf.eth0.rp_filter", "0", false},
			{&c.Pod("pod-a").Host, "net.ipv4.conf.default.rp_filter", "0", false},
			{c.Fabric, "net.bridge.bridge-nf-call-iptables", "0", true},
		}
		for _, tt := range tests {
			got, err := tt.host.Sysctl(tt.key)
			if tt.absentOK && errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil || got != tt.want {
				t.Errorf("%s in %s = %q (%v), want %q", tt.key, tt.host.Name, got, err, tt.want)
			}
		}
	})

	t.Run("Run executes inside the namespace", func(t *testing.T) {
		tests := []struct {
			host *Host
			args []string
			want string
		}{
			{&c.Pod("pod-b").Host, []string{"ip", "-o", "-4", "addr", "show", "dev", "eth0"}, "10.244.2.10/32"},
			{&c.Node("node1").Host, []string{"ip", "-4", "route", "show"}, "10.244.2.0/24 via 172.30.0.12 dev eth0"},
			{&c.Node("node1").Host, []string{"ip", "-4", "route", "show"}, "10.244.1.10 dev veth-pod-a scope link"},
			{&c.Pod("pod-a").Host, []string{"ip", "-4", "route", "show"}, "default via 172.30.0.11 dev eth0 onlink"},
			{c.External, []string{"ip", "-4", "route", "show"}, "203.0.113.0/24 via 172.30.0.11 dev eth0"},
		}
		for _, tt := range tests {
			out, err := tt.host.Run(ctx, tt.args...)
			if err != nil {
				t.Fatalf("Run(%v) in %s: %v", tt.args, tt.host.Name, err)
			}
			if !strings.Contains(string(out), tt.want) {
				t.Errorf("Run(%v) in %s = %q, want it to contain %q", tt.args, tt.host.Name, out, tt.want)
			}
		}
	})

	stopServers()
	waitServers()
	closeAndCheck(t, c)
}

// closeAndCheck closes c twice and checks that no namespace is left.
func closeAndCheck(t *testing.T, c *Cluster) {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if left := leftNamespaces(t, c.Prefix); len(left) > 0 {
		t.Errorf("namespaces left after Close: %v", left)
	}
}

// straySleep starts a process inside h that the cluster does not track and
// reaps it in the background.
func straySleep(t *testing.T, h *Host) (*exec.Cmd, chan error) {
	t.Helper()
	cmd := exec.Command("sleep", "1000")
	if err := h.Do(cmd.Start); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	return cmd, done
}

// processGone reports whether pid has exited (and was reaped, or is not ours).
func processGone(pid int) bool {
	_, err := os.Stat(filepath.Join("/proc", fmt.Sprint(pid), "ns", "net"))
	return errors.Is(err, os.ErrNotExist)
}

func TestCloseStopsProcesses(t *testing.T) {
	ctx := context.Background()
	c, err := Build(ctx, Spec{Nodes: []NodeSpec{{Name: "node1", Pods: []string{"p1"}}}})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	defer c.Close()
	node := c.Node("node1")
	proc, err := node.Start("sh", "-c", "echo started; exec sleep 1000")
	if err != nil {
		t.Fatal(err)
	}
	want, err := statNS(filepath.Join(netnsDir, node.NS))
	if err != nil {
		t.Fatal(err)
	}
	got, err := statNS(filepath.Join("/proc", fmt.Sprint(proc.Pid), "ns", "net"))
	if err != nil || got != want {
		t.Fatalf("process netns %v (%v), want the node's %v", got, err, want)
	}
	stray, strayDone := straySleep(t, &c.Pod("p1").Host)

	closeAndCheck(t, c)
	if !proc.Exited() {
		t.Errorf("started process %d still runs after Close", proc.Pid)
	}
	if err := <-strayDone; err == nil {
		t.Errorf("stray process %d exited cleanly, want it killed", stray.Process.Pid)
	}
	if _, err := os.Stat(c.LogDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("log directory %s left after Close (%v)", c.LogDir, err)
	}
	if _, err := node.Start("true"); err == nil {
		t.Errorf("Start after Close succeeded, want an error")
	}
}

func TestStartLogs(t *testing.T) {
	c, err := Build(context.Background(), Spec{Nodes: []NodeSpec{{Name: "node1"}}})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	defer c.Close()
	proc, err := c.Node("node1").Start("sh", "-c", "echo out; echo err >&2; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	var exitErr *exec.ExitError
	if err := proc.Wait(); !errors.As(err, &exitErr) || exitErr.ExitCode() != 3 {
		t.Errorf("Wait() = %v, want exit status 3", err)
	}
	log, err := os.ReadFile(proc.LogPath)
	if err != nil || string(log) != "out\nerr\n" {
		t.Errorf("log %q (%v), want \"out\\nerr\\n\"", log, err)
	}
	if err := proc.Stop(); err != nil {
		t.Errorf("Stop after exit: %v", err)
	}
	closeAndCheck(t, c)
}

func TestBuildFailureCleansUp(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	// The fabric is made, then the build stops at the first node.
	cancel()
	// Unique among concurrent runs.
	prefix := fmt.Sprintf("svcpfail%d", os.Getpid())
	_, err := Build(ctx, Spec{Prefix: prefix, Nodes: []NodeSpec{{Name: "node1", Pods: []string{"p"}}}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Build with a cancelled context = %v, want context.Canceled", err)
	}
	if left := leftNamespaces(t, prefix); len(left) > 0 {
		t.Errorf("namespaces left after a failed build: %v", left)
	}
}

func TestRemoveByPrefix(t *testing.T) {
	c, err := Build(context.Background(), Spec{Nodes: []NodeSpec{{Name: "n1", Pods: []string{"p1"}}, {Name: "n2"}}})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	defer c.Close()
	prefixes, err := ListPrefixes()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range prefixes {
		found = found || p == c.Prefix
	}
	if !found {
		t.Errorf("ListPrefixes() = %v, want it to contain %s", prefixes, c.Prefix)
	}
	stray, strayDone := straySleep(t, &c.Node("n2").Host)
	// A process outside our namespaces must survive.
	outside := exec.Command("sleep", "1000")
	if err := outside.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = outside.Process.Kill()
		_ = outside.Wait()
	}()

	if err := RemoveByPrefix(c.Prefix); err != nil {
		t.Fatalf("RemoveByPrefix: %v", err)
	}
	if left := leftNamespaces(t, c.Prefix); len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
	<-strayDone
	if !processGone(stray.Process.Pid) {
		t.Errorf("process %d in a removed namespace still runs", stray.Process.Pid)
	}
	if processGone(outside.Process.Pid) {
		t.Errorf("process %d outside the namespaces was killed", outside.Process.Pid)
	}
	if err := RemoveByPrefix(""); err == nil {
		t.Errorf("RemoveByPrefix(\"\") succeeded, want a refusal")
	}
	closeAndCheck(t, c)
}

func TestConcurrentClose(t *testing.T) {
	c, err := Build(context.Background(), Spec{Nodes: []NodeSpec{{Name: "n1", Pods: []string{"p1", "p2"}}}, External: true})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.Close()
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Errorf("concurrent Close: %v", err)
	}
	if left := leftNamespaces(t, c.Prefix); len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
}
