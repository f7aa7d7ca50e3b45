package kubesource

// Test conventions: the fake API server is client-go's fake clientset;
// services live in namespace "ns"; 10.96.0.0/16 are cluster IPs, 10.0.x.y
// pod IPs and 192.168.0.x node IPs. Waiting for an event uses a generous
// deadline that only fails a test that hangs; nothing asserts on speed.

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/proxier"
)

// fakeSink records what a source delivers.
type fakeSink struct {
	mu       sync.Mutex
	services map[types.NamespacedName]*v1.Service
	slices   map[types.NamespacedName]*discovery.EndpointSlice
	events   []string
	notify   chan struct{}
}

var _ proxier.Sink = (*fakeSink)(nil)

func newFakeSink() *fakeSink {
	return &fakeSink{
		services: map[types.NamespacedName]*v1.Service{},
		slices:   map[types.NamespacedName]*discovery.EndpointSlice{},
		notify:   make(chan struct{}, 1),
	}
}

func (f *fakeSink) record(ev string) {
	f.events = append(f.events, ev)
	select {
	case f.notify <- struct{}{}:
	default:
	}
}

func (f *fakeSink) UpdateService(svc *v1.Service) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	f.services[key] = svc
	f.record("service+ " + key.String())
}

func (f *fakeSink) DeleteService(key types.NamespacedName) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.services, key)
	f.record("service- " + key.String())
}

func (f *fakeSink) UpdateEndpointSlice(s *discovery.EndpointSlice) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
	f.slices[key] = s
	f.record("slice+ " + key.String())
}

func (f *fakeSink) DeleteEndpointSlice(key types.NamespacedName) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.slices, key)
	f.record("slice- " + key.String())
}

// Events returns the events so far.
func (f *fakeSink) Events() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.events)
}

// waitFor blocks until cond (called with the lock held) holds.
func (f *fakeSink) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		f.mu.Lock()
		ok := cond()
		f.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-f.notify:
		case <-deadline:
			t.Fatalf("gave up waiting for %s; events: %v", what, f.Events())
		}
	}
}

func service(name string, labels map[string]string) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: labels,
			Annotations:   map[string]string{proxier.SchedulerAnnotation: "sh", "kubectl.kubernetes.io/last-applied-configuration": "{...}"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec: v1.ServiceSpec{
			ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Selector: map[string]string{"app": name},
			Ports:    []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
}

func slice(name, svc string, extraLabels map[string]string, ips ...string) *discovery.EndpointSlice {
	labels := map[string]string{discovery.LabelServiceName: svc, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
	for k, v := range extraLabels {
		labels[k] = v
	}
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: labels,
			Annotations: map[string]string{v1.EndpointsLastChangeTriggerTime: "2026-01-01T00:00:00Z", "other": "x"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, ip := range ips {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses:  []string{ip},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To("node-a"),
			TargetRef:  &v1.ObjectReference{Kind: "Pod", Namespace: "ns", Name: "pod-" + ip},
		})
	}
	return s
}

func key(name string) types.NamespacedName { return types.NamespacedName{Namespace: "ns", Name: name} }

func TestStartDeliversInitialStateBeforeReturning(t *testing.T) {
	client := fake.NewClientset(
		service("web", nil),
		service("other-proxy", map[string]string{LabelServiceProxyName: "someone-else"}),
		slice("web-abc", "web", nil, "10.0.1.1", "10.0.2.1"),
		slice("headless-abc", "headless", map[string]string{LabelHeadless: ""}, "10.0.1.2"),
	)
	sink := newFakeSink()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := &Source{Client: client}
	if err := src.Start(ctx, sink); err != nil {
		t.Fatalf("Start: %v", err)
	}
	// No waiting: Start returns only after the initial state was delivered.
	got := sink.Events()
	slices.Sort(got)
	want := []string{"service+ ns/web", "slice+ ns/web-abc"}
	if !slices.Equal(got, want) {
		t.Fatalf("initial events: got %v, want %v", got, want)
	}
	svc := sink.services[key("web")]
	if svc.ManagedFields != nil || svc.Annotations["kubectl.kubernetes.io/last-applied-configuration"] != "" || svc.Spec.Selector != nil {
		t.Errorf("service not trimmed: %+v", svc.ObjectMeta)
	}
	if svc.Annotations[proxier.SchedulerAnnotation] != "sh" {
		t.Errorf("the scheduler annotation must stay, got %v", svc.Annotations)
	}
	sl := sink.slices[key("web-abc")]
	if sl.Endpoints[0].TargetRef != nil || sl.Annotations["other"] != "" || sl.Labels["endpointslice.kubernetes.io/managed-by"] != "" {
		t.Errorf("slice not trimmed: %+v", sl)
	}
	if sl.Annotations[v1.EndpointsLastChangeTriggerTime] == "" || sl.Labels[discovery.LabelServiceName] != "web" {
		t.Errorf("slice lost what the tracker reads: %+v", sl.ObjectMeta)
	}
	// The trimmed objects still convert.
	if _, err := proxier.ServicePorts(svc); err != nil {
		t.Errorf("trimmed service does not convert: %v", err)
	}
	eps, err := proxier.SliceEndpoints(sl)
	if err != nil || len(eps) != 1 {
		t.Errorf("trimmed slice does not convert: %v %v", eps, err)
	}
}

func TestChangesAfterStart(t *testing.T) {
	client := fake.NewClientset(service("web", nil), slice("web-abc", "web", nil, "10.0.1.1"))
	sink := newFakeSink()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := (&Source{Client: client}).Start(ctx, sink); err != nil {
		t.Fatalf("Start: %v", err)
	}
	api := client.CoreV1().Services("ns")
	slicesAPI := client.DiscoveryV1().EndpointSlices("ns")

	steps := []struct {
		name string
		do   func() error
		// want is the next event the sink must see.
		want string
	}{
		{"create service", func() error { _, err := api.Create(ctx, service("api", nil), metav1.CreateOptions{}); return err }, "service+ ns/api"},
		{"noise then a real change: only the real change arrives", func() error {
			s := service("web", map[string]string{"team": "blue"}) // a label: trimmed, no event
			s.Annotations["ignored"] = "yes"
			if _, err := api.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
				return err
			}
			s = service("web", nil)
			s.Spec.Ports[0].Port = 81
			_, err := api.Update(ctx, s, metav1.UpdateOptions{})
			return err
		}, "service+ ns/web"},
		{"slice update", func() error {
			_, err := slicesAPI.Update(ctx, slice("web-abc", "web", nil, "10.0.1.1", "10.0.3.1"), metav1.UpdateOptions{})
			return err
		}, "slice+ ns/web-abc"},
		{"slice delete", func() error { return slicesAPI.Delete(ctx, "web-abc", metav1.DeleteOptions{}) }, "slice- ns/web-abc"},
		{"service delete", func() error { return api.Delete(ctx, "api", metav1.DeleteOptions{}) }, "service- ns/api"},
	}
	for _, st := range steps {
		n := len(sink.Events())
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		sink.waitFor(t, st.name, func() bool { return len(sink.events) > n })
		if got := sink.Events()[n]; got != st.want {
			t.Fatalf("%s: next event %q, want %q (all: %v)", st.name, got, st.want, sink.Events())
		}
	}
	if got := sink.services[key("web")].Spec.Ports[0].Port; got != 81 {
		t.Errorf("web port: got %d, want 81", got)
	}
}

// TestLostConnectionKeepsState cuts the watches and fails every list for a
// while: nothing may be deleted. When the API answers again, only what was
// really deleted meanwhile goes.
func TestLostConnectionKeepsState(t *testing.T) {
	client := fake.NewClientset(service("web", nil), service("gone", nil), slice("web-abc", "web", nil, "10.0.1.1"))
	var down atomic.Bool
	listFailed := make(chan string, 1000)
	var watchersMu sync.Mutex
	var watchers []*watch.RaceFreeFakeWatcher
	client.PrependReactor("list", "*", func(a clienttesting.Action) (bool, runtime.Object, error) {
		if down.Load() {
			select {
			case listFailed <- a.GetResource().Resource:
			default:
			}
			return true, nil, errors.New("connection refused")
		}
		return false, nil, nil
	})
	client.PrependWatchReactor("*", func(a clienttesting.Action) (bool, watch.Interface, error) {
		if down.Load() {
			return true, nil, errors.New("connection refused")
		}
		w := watch.NewRaceFreeFake()
		watchersMu.Lock()
		watchers = append(watchers, w)
		watchersMu.Unlock()
		return true, w, nil // a watch that never reports: the list is the truth
	})
	sink := newFakeSink()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := (&Source{Client: client}).Start(ctx, sink); err != nil {
		t.Fatalf("Start: %v", err)
	}
	before := len(sink.Events())

	// The API server goes away: watches end, lists fail.
	down.Store(true)
	if err := client.Tracker().Delete(v1.SchemeGroupVersion.WithResource("services"), "ns", "gone"); err != nil {
		t.Fatal(err)
	}
	watchersMu.Lock()
	for _, w := range watchers {
		w.Stop()
	}
	watchersMu.Unlock()
	failed := map[string]bool{}
	for !failed["services"] || !failed["endpointslices"] { // both informers retried
		select {
		case r := <-listFailed:
			failed[r] = true
		case <-time.After(30 * time.Second):
			t.Fatal("gave up waiting for the informers to retry")
		}
	}
	if got := sink.Events()[before:]; len(got) != 0 {
		t.Fatalf("events while the API server was down: %v", got)
	}

	// It comes back: the relist removes only what was deleted meanwhile.
	down.Store(false)
	sink.waitFor(t, "the deletion of ns/gone", func() bool { return sink.services[key("gone")] == nil })
	if sink.services[key("web")] == nil || sink.slices[key("web-abc")] == nil {
		t.Fatalf("state lost after reconnect: events %v", sink.Events())
	}
	for _, ev := range sink.Events()[before:] {
		if ev != "service- ns/gone" {
			t.Errorf("unexpected event after reconnect: %s", ev)
		}
	}
}

func TestNodeWatch(t *testing.T) {
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{v1.LabelTopologyZone: "zone-1"},
			Annotations: map[string]string{"big": "yes"}},
		Status: v1.NodeStatus{
			Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.0.1"}},
			Images:    []v1.ContainerImage{{Names: []string{"huge"}}},
		},
	}
	client := fake.NewClientset(node)
	seen := make(chan *v1.Node, 10)
	src := &Source{Client: client, NodeName: "node-a", OnNode: func(n *v1.Node) { seen <- n }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := src.Start(ctx, newFakeSink()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	n := src.Node()
	if n == nil || n.Labels[v1.LabelTopologyZone] != "zone-1" || n.Annotations != nil || n.Status.Images != nil {
		t.Fatalf("node after start: %+v", n)
	}
	<-seen
	upd := node.DeepCopy()
	upd.Spec.Taints = []v1.Taint{{Key: ToBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}
	if _, err := client.CoreV1().Nodes().Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case n = <-seen:
	case <-time.After(30 * time.Second):
		t.Fatal("gave up waiting for the node update")
	}
	if NodeEligible(n) || NodeEligible(src.Node()) {
		t.Error("a node with the ToBeDeleted taint is not eligible")
	}
}

func TestFetchNode(t *testing.T) {
	tests := []struct {
		name    string
		node    *v1.Node
		want    proxier.Node
		wantIPs []string
		wantErr bool
	}{
		{
			name: "internal IPs, one per family, zone label",
			node: &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{v1.LabelTopologyZone: "z1"}},
				Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
					{Type: v1.NodeHostName, Address: "n1"},
					{Type: v1.NodeExternalIP, Address: "203.0.113.1"},
					{Type: v1.NodeInternalIP, Address: "192.168.0.1"},
					{Type: v1.NodeInternalIP, Address: "192.168.0.2"},
					{Type: v1.NodeInternalIP, Address: "fd00::1"},
				}}},
			want:    proxier.Node{Name: "n1", Zone: "z1"},
			wantIPs: []string{"192.168.0.1", "fd00::1"},
		},
		{
			name: "external IP when there is no internal one, deprecated zone label",
			node: &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{v1.LabelFailureDomainBetaZone: "old"}},
				Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeExternalIP, Address: "203.0.113.1"}}}},
			want:    proxier.Node{Name: "n1", Zone: "old"},
			wantIPs: []string{"203.0.113.1"},
		},
		{
			name:    "missing node: error after the bounded wait",
			want:    proxier.Node{Name: "n1"},
			wantErr: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset()
			if tc.node != nil {
				client = fake.NewClientset(tc.node)
			}
			got, ips, err := FetchNode(context.Background(), client, "n1", 100*time.Millisecond)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("node: got %+v want %+v", got, tc.want)
			}
			var gotIPs []string
			for _, ip := range ips {
				gotIPs = append(gotIPs, ip.String())
			}
			if !slices.Equal(gotIPs, tc.wantIPs) {
				t.Errorf("IPs: got %v want %v", gotIPs, tc.wantIPs)
			}
		})
	}
}

func TestNodeEligible(t *testing.T) {
	now := metav1.Now()
	tests := []struct {
		name string
		node *v1.Node
		want bool
	}{
		{"nil", nil, false},
		{"plain", &v1.Node{}, true},
		{"deleting", &v1.Node{ObjectMeta: metav1.ObjectMeta{DeletionTimestamp: &now}}, false},
		{"other taint", &v1.Node{Spec: v1.NodeSpec{Taints: []v1.Taint{{Key: "x"}}}}, true},
		{"to be deleted", &v1.Node{Spec: v1.NodeSpec{Taints: []v1.Taint{{Key: ToBeDeletedTaint}}}}, false},
	}
	for _, tc := range tests {
		if got := NodeEligible(tc.node); got != tc.want {
			t.Errorf("%s: got %v want %v", tc.name, got, tc.want)
		}
	}
}

func TestTransformKeepsUnknownTypes(t *testing.T) {
	pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{"a": "b"}}}
	got, err := Transform(pod)
	if err != nil || got.(*v1.Pod).Annotations["a"] != "b" {
		t.Fatalf("got %v %v", got, err)
	}
}
