package apiserver

// These tests run a real etcd and kube-apiserver on 127.0.0.1 of the throwaway
// network namespace isolate gives the test binary. Waiting for an event has
// a generous deadline that only fails a hung test; nothing asserts on speed.

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	componentbaseconfig "k8s.io/component-base/config/v1alpha1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/isolate"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/kubesource"
)

func TestMain(m *testing.M) {
	isolate.MustIsolate()
	os.Exit(m.Run())
}

// svcproxyUser is the ServiceAccount deploy/rbac.yaml binds, as the API
// server sees it.
const svcproxyUser = "system:serviceaccount:kube-system:svcproxy"

// applyRBAC creates deploy/rbac.yaml's ServiceAccount, ClusterRole and
// binding, so the source runs with exactly the rights the DaemonSet has.
func applyRBAC(ctx context.Context, t *testing.T, client kubernetes.Interface) {
	t.Helper()
	if err := ApplyFile(ctx, client, filepath.Join("..", "..", "deploy", "rbac.yaml")); err != nil {
		t.Fatal(err)
	}
}

// startServer starts a control plane for one test, stopped when it ends.
func startServer(t *testing.T) (context.Context, *Server, kubernetes.Interface) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	srv, err := Start(ctx, Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(srv.Stop)
	admin, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	return ctx, srv, admin
}

// TestDeployManifestsApply has the API server validate every manifest in
// deploy/ (no controller runs, so nothing starts).
func TestDeployManifestsApply(t *testing.T) {
	ctx, _, admin := startServer(t)
	files, err := filepath.Glob(filepath.Join("..", "..", "deploy", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	applied := 0
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		if err := ApplyFile(ctx, admin, f); err != nil {
			t.Fatal(err)
		}
		applied++
	}
	if applied < 5 {
		t.Fatalf("only %d manifests in deploy/", applied)
	}
	ds, err := admin.AppsV1().DaemonSets("kube-system").Get(ctx, "svcproxy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.ServiceAccountName != "svcproxy" || !*spec.Containers[0].SecurityContext.Privileged {
		t.Errorf("DaemonSet: hostNetwork %v serviceAccount %q", spec.HostNetwork, spec.ServiceAccountName)
	}
}

// notifyingTracker is the real change tracker, with a channel that ticks on
// every accepted change.
type notifyingTracker struct {
	*proxier.Tracker
	changed chan struct{}
}

func newNotifyingTracker() *notifyingTracker {
	n := &notifyingTracker{changed: make(chan struct{}, 1)}
	n.Tracker = proxier.NewTracker(func() {
		select {
		case n.changed <- struct{}{}:
		default:
		}
	})
	return n
}

// deletingSink counts deletions on their way to the tracker.
type deletingSink struct {
	*notifyingTracker
	deletes chan types.NamespacedName
}

func (d *deletingSink) DeleteService(key types.NamespacedName) {
	d.deletes <- key
	d.notifyingTracker.DeleteService(key)
}

func (d *deletingSink) DeleteEndpointSlice(key types.NamespacedName) {
	d.deletes <- key
	d.notifyingTracker.DeleteEndpointSlice(key)
}

// waitSnapshot commits the tracker until cond holds on the snapshot.
func (n *notifyingTracker) waitSnapshot(t *testing.T, what string, cond func(proxier.Snapshot) bool) proxier.Snapshot {
	t.Helper()
	deadline := time.After(60 * time.Second)
	var snap proxier.Snapshot
	for {
		snap, _ = n.Commit()
		if cond(snap) {
			return snap
		}
		select {
		case <-n.changed:
		case <-deadline:
			t.Fatalf("gave up waiting for %s; snapshot has %d service ports", what, len(snap.Services))
		}
	}
}

func webService(name string) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name,
			Annotations: map[string]string{proxier.SchedulerAnnotation: "sh"}},
		Spec: v1.ServiceSpec{
			Type:                  v1.ServiceTypeNodePort,
			ExternalTrafficPolicy: v1.ServiceExternalTrafficPolicyLocal,
			Ports:                 []v1.ServicePort{{Name: "http", Port: 9000, Protocol: v1.ProtocolTCP}},
		},
	}
}

func webSlice(svc, name string, ips ...string) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name,
			Labels:      map[string]string{discovery.LabelServiceName: svc},
			Annotations: map[string]string{v1.EndpointsLastChangeTriggerTime: time.Now().UTC().Format(time.RFC3339Nano)}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](80), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, ip := range ips {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{ip},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}, NodeName: ptr.To("node-a")})
	}
	return s
}

func spn(name string) proxier.ServicePortName {
	return proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: name}, Port: "http", Protocol: v1.ProtocolTCP}
}

// TestKubeSourceAgainstRealAPIServer starts the control plane, gives the
// source deploy/rbac.yaml's rights only, and follows Services and
// EndpointSlices through the informers into the real tracker, across an
// apiserver restart.
func TestKubeSourceAgainstRealAPIServer(t *testing.T) {
	ctx, srv, admin := startServer(t)
	applyRBAC(ctx, t, admin)
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{v1.LabelTopologyZone: "zone-1"}},
		Status:     v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "172.30.0.11"}}},
	}
	if _, err := admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Services("default").Create(ctx, webService("web"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.DiscoveryV1().EndpointSlices("default").Create(ctx, webSlice("web", "web-1", "10.244.1.10", "10.244.2.10"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The source, as svcproxy runs it: its own kubeconfig, its own rights.
	kubeconfig, err := srv.UserKubeconfig(svcproxyUser, "system:serviceaccounts", "system:serviceaccounts:kube-system")
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubesource.NewClient(componentbaseconfig.ClientConnectionConfiguration{Kubeconfig: kubeconfig,
		ContentType: "application/vnd.kubernetes.protobuf"}, "")
	if err != nil {
		t.Fatal(err)
	}
	info, ips, err := kubesource.FetchNode(ctx, client, "node-a", 30*time.Second)
	if err != nil {
		t.Fatalf("FetchNode with svcproxy's rights: %v", err)
	}
	if info.Zone != "zone-1" || len(ips) != 1 || ips[0].String() != "172.30.0.11" {
		t.Errorf("node: %+v %v", info, ips)
	}
	tracker := newNotifyingTracker()
	sink := &deletingSink{notifyingTracker: tracker, deletes: make(chan types.NamespacedName, 100)}
	src := &kubesource.Source{Client: client, NodeName: "node-a"}
	srcCtx, stopSrc := context.WithCancel(ctx)
	defer stopSrc()
	if err := src.Start(srcCtx, sink); err != nil {
		t.Fatalf("source Start: %v", err)
	}
	// Start returned: the initial state is in the tracker already.
	snap, ch := tracker.Commit()
	sp := snap.Services[spn("web")]
	if sp == nil || len(snap.Endpoints[spn("web")]) != 2 {
		t.Fatalf("initial snapshot: %+v", snap)
	}
	if sp.NodePort == 0 || !sp.ExternalPolicyLocal || sp.Scheduler != "sh" || len(sp.ClusterIPs) != 1 {
		t.Errorf("service port: %+v", sp)
	}
	if len(ch.TriggerTimes) != 1 {
		t.Errorf("trigger times: %v", ch.TriggerTimes)
	}
	if n := src.Node(); n == nil || !kubesource.NodeEligible(n) {
		t.Errorf("node watch: %+v", n)
	}

	// A change reaches the tracker.
	if _, err := admin.DiscoveryV1().EndpointSlices("default").Update(ctx, webSlice("web", "web-1", "10.244.1.10"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	tracker.waitSnapshot(t, "the endpoint removal", func(s proxier.Snapshot) bool { return len(s.Endpoints[spn("web")]) == 1 })

	// The apiserver goes away and comes back: nothing is deleted, and the
	// informers resume.
	restartStart := time.Now()
	if err := srv.StopAPIServer(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	stopped := time.Now()
	if err := srv.StartAPIServer(ctx); err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Logf("apiserver stop took %v, start to ready %v", stopped.Sub(restartStart).Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond))
	resumeStart := time.Now()
	if _, err := admin.CoreV1().Services("default").Create(ctx, webService("after-restart"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	snap = tracker.waitSnapshot(t, "a service created after the restart", func(s proxier.Snapshot) bool { return s.Services[spn("after-restart")] != nil })
	t.Logf("the informers resumed and delivered a new service %v after the apiserver was ready", time.Since(resumeStart).Round(time.Millisecond))
	if snap.Services[spn("web")] == nil || len(snap.Endpoints[spn("web")]) != 1 {
		t.Errorf("state lost across the restart: %+v", snap)
	}
	select {
	case key := <-sink.deletes:
		t.Errorf("deleted across the restart: %v", key)
	default:
	}

	// A deletion after the restart arrives.
	if err := admin.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	tracker.waitSnapshot(t, "the service deletion", func(s proxier.Snapshot) bool { return s.Services[spn("web")] == nil })
}
