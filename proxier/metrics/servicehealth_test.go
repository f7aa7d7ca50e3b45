package metrics

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
)

// loopbackListener listens on 127.0.0.1 with a kernel-chosen port and
// remembers which health check port it stands for.
type loopbackListener struct {
	mu    sync.Mutex
	addrs map[string]string // requested port → real address
}

func (l *loopbackListener) listen(network, address string) (net.Listener, error) {
	_, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen(network, "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.addrs[port] = ln.Addr().String()
	l.mu.Unlock()
	return ln, nil
}

func (l *loopbackListener) url(port int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return "http://" + l.addrs[fmt.Sprint(port)] + "/"
}

type hcAnswer struct {
	code int
	body serviceHealthBody
	err  error
}

func get(url string) hcAnswer {
	resp, err := http.Get(url)
	if err != nil {
		return hcAnswer{err: err}
	}
	defer resp.Body.Close()
	var a hcAnswer
	a.code = resp.StatusCode
	a.err = json.NewDecoder(resp.Body).Decode(&a.body)
	return a
}

func lbLocal(name string, port string, hc int) *proxier.ServicePort {
	return &proxier.ServicePort{Name: spn(name, port), Port: 80, NodePort: 30080, ExternalPolicyLocal: true, HealthCheckNodePort: hc}
}

func TestServiceHealthServer(t *testing.T) {
	ll := &loopbackListener{addrs: map[string]string{}}
	var proxyHealthy atomic.Bool
	proxyHealthy.Store(true)
	s := NewServiceHealthServer(ServiceHealthOptions{Listen: ll.listen, Healthy: proxyHealthy.Load})
	defer s.Close()

	steps := []struct {
		name string
		snap proxier.Snapshot
		// want maps a health check port to the answer expected there:
		// status code and local endpoint count; -1 means closed.
		want         map[int][2]int
		proxyHealthy bool
	}{
		{
			name: "two local endpoints on two ports count once per IP; a remote one does not count",
			snap: snapshot(
				lbLocal("web", "http", 32001), ep("10.0.1.1", "node-a", true), ep("10.0.1.2", "node-a", true), ep("10.0.2.1", "node-b", true),
				lbLocal("web", "https", 32001), ep("10.0.1.1", "node-a", true),
				lbLocal("remote", "", 32002), ep("10.0.2.2", "node-b", true),
			),
			want:         map[int][2]int{32001: {200, 2}, 32002: {503, 0}},
			proxyHealthy: true,
		},
		{
			name: "a local terminating endpoint does not count (the load balancer drains the node)",
			snap: snapshot(
				lbLocal("web", "http", 32001), terminating("10.0.1.1", "node-a"), ep("10.0.2.1", "node-b", true),
				lbLocal("remote", "", 32002), ep("10.0.2.2", "node-b", true), ep("10.0.1.9", "node-a", true),
			),
			want:         map[int][2]int{32001: {503, 0}, 32002: {200, 1}},
			proxyHealthy: true,
		},
		{
			name: "an unhealthy proxy answers 503 everywhere",
			snap: snapshot(
				lbLocal("web", "http", 32001), ep("10.0.1.1", "node-a", true),
			),
			want:         map[int][2]int{32001: {503, 1}, 32002: {-1, 0}},
			proxyHealthy: false,
		},
		{
			name: "the port moves; the service without a health check port has none",
			snap: snapshot(
				lbLocal("web", "http", 32003), ep("10.0.1.1", "node-a", true),
				&proxier.ServicePort{Name: spn("cluster", ""), Port: 80, NodePort: 30081}, ep("10.0.1.1", "node-a", true),
			),
			want:         map[int][2]int{32001: {-1, 0}, 32003: {200, 1}},
			proxyHealthy: true,
		},
	}
	for _, st := range steps {
		proxyHealthy.Store(st.proxyHealthy)
		oldURLs := map[int]string{}
		for port := range st.want {
			oldURLs[port] = ll.url(port)
		}
		if err := s.Sync(st.snap, nodeA); err != nil {
			t.Fatalf("%s: Sync: %v", st.name, err)
		}
		for port, want := range st.want {
			if want[0] == -1 {
				if old := oldURLs[port]; old != "http:///" {
					if a := get(old); a.err == nil {
						t.Errorf("%s: port %d still answers: %d", st.name, port, a.code)
					}
				}
				continue
			}
			a := get(ll.url(port))
			if a.err != nil {
				t.Fatalf("%s: port %d: %v", st.name, port, a.err)
			}
			if a.code != want[0] || a.body.LocalEndpoints != want[1] || a.body.ServiceProxyHealthy != st.proxyHealthy {
				t.Errorf("%s: port %d: got %d %+v, want %d with %d local endpoints", st.name, port, a.code, a.body, want[0], want[1])
			}
			if a.body.Service.Namespace != "ns" || a.body.Service.Name == "" {
				t.Errorf("%s: port %d: service %+v", st.name, port, a.body.Service)
			}
		}
	}
}

func TestServiceHealthServerRetriesAFailedListen(t *testing.T) {
	fail := true
	ll := &loopbackListener{addrs: map[string]string{}}
	s := NewServiceHealthServer(ServiceHealthOptions{Listen: func(n, a string) (net.Listener, error) {
		if fail {
			return nil, fmt.Errorf("address already in use")
		}
		return ll.listen(n, a)
	}})
	defer s.Close()
	snap := snapshot(lbLocal("web", "", 32001), ep("10.0.1.1", "node-a", true))
	if err := s.Sync(snap, nodeA); err == nil {
		t.Fatal("want the listen error")
	}
	fail = false
	if err := s.Sync(snap, nodeA); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if got := s.Ports(); got[spn("web", "").NamespacedName] != 32001 {
		t.Fatalf("open ports: %v", got)
	}
	if a := get(ll.url(32001)); a.err != nil || a.code != 200 {
		t.Fatalf("after retry: %+v", a)
	}
}

func TestSyncHook(t *testing.T) {
	m := New()
	hs := NewHealthServer(HealthOptions{Timeout: 1 << 62})
	ll := &loopbackListener{addrs: map[string]string{}}
	shs := NewServiceHealthServer(ServiceHealthOptions{Listen: ll.listen, Healthy: hs.Healthy})
	defer shs.Close()
	hook := SyncHook(m, hs, shs, func() map[string]int { return map[string]int{"ipvs-virtual-servers": 2} }, nodeA)
	hook(proxier.SyncReport{Snapshot: snapshot(lbLocal("web", "", 32001), ep("10.0.1.1", "node-a", true))})
	if a := get(ll.url(32001)); a.err != nil || a.code != 200 || a.body.LocalEndpoints != 1 {
		t.Fatalf("health check port after the hook: %+v", a)
	}
	if len(scrape(t, m)) == 0 {
		t.Fatal("no metrics")
	}
	hs.mu.Lock()
	synced := !hs.lastUpdated.IsZero()
	hs.mu.Unlock()
	if !synced {
		t.Error("the hook did not mark the health server updated")
	}
}
