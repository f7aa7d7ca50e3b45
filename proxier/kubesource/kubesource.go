// Package kubesource is svcproxy's Kubernetes source: client-go reflectors
// on Services and EndpointSlices and an informer on this node's Node object,
// feeding a proxier.Sink (the change tracker).
//
// The Service and EndpointSlice reflectors keep no object cache: each object
// is trimmed (Transform strips managed fields, owner references, pod
// references, labels, and every annotation but the two the proxy reads),
// handed to the sink, and forgotten but for its key and a fingerprint of what
// the proxy reads. The tracker's model is then the only copy in memory. A
// lost connection to the API server deletes nothing: the reflectors retry,
// and when they list again only objects that were really deleted meanwhile
// are removed.
package kubesource

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	componentbaseconfig "k8s.io/component-base/config/v1alpha1"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
)

// Labels that exclude an object from the proxy, as in kube-proxy: a Service
// claimed by another service proxy, and the EndpointSlices of headless
// Services.
const (
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	LabelHeadless         = v1.IsHeadlessService
)

// proxiedSelector is the label selector of both watches.
const proxiedSelector = "!" + LabelServiceProxyName + ",!" + LabelHeadless

// Source feeds a proxier.Sink from the API server. Set the fields, then call
// Start once.
type Source struct {
	// Client talks to the API server (see NewClient).
	Client kubernetes.Interface
	// NodeName is this node; when set, its Node object is watched too (see
	// Node and OnNode).
	NodeName string
	// ResyncPeriod is the Node informer's resync period (kube-proxy's
	// configSyncPeriod); 0 disables resyncs.
	ResyncPeriod time.Duration
	// OnNode, if set, is called with this node's Node object whenever it is
	// added or changed, and with nil when it is deleted.
	OnNode func(*v1.Node)

	node atomic.Pointer[v1.Node]
}

// Start starts the watches, waits until each has listed and delivered the
// initial objects to sink, and returns; the watches keep feeding sink until
// ctx ends. It fails if ctx ends before the first lists complete.
//
// Services and EndpointSlices are watched by reflectors whose store keeps
// no objects (see forwardingStore): the tracker's model is the only copy
// in memory, where an informer would also keep every object in its cache.
func (s *Source) Start(ctx context.Context, sink proxier.Sink) error {
	if s.Client == nil {
		return fmt.Errorf("kube source: no API client")
	}
	tweak := func(o *metav1.ListOptions) { o.LabelSelector = proxiedSelector }
	services := &forwardingStore{kind: "Service", sink: sink, changed: serviceFingerprint, forward: forwardService}
	slices := &forwardingStore{kind: "EndpointSlice", sink: sink, changed: sliceFingerprint, forward: forwardSlice}
	svcLW := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			tweak(&o)
			return s.Client.CoreV1().Services(metav1.NamespaceAll).List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			tweak(&o)
			return s.Client.CoreV1().Services(metav1.NamespaceAll).Watch(ctx, o)
		},
	}
	sliceLW := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			tweak(&o)
			return s.Client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			tweak(&o)
			return s.Client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).Watch(ctx, o)
		},
	}
	// The reflectors stream their initial lists (watch-list) where the
	// client supports it, as informers do.
	go cache.NewReflectorWithOptions(cache.ToListWatcherWithWatchListSemantics(svcLW, s.Client), &v1.Service{}, services, cache.ReflectorOptions{Name: "svcproxy services"}).RunWithContext(ctx)
	go cache.NewReflectorWithOptions(cache.ToListWatcherWithWatchListSemantics(sliceLW, s.Client), &discovery.EndpointSlice{}, slices, cache.ReflectorOptions{Name: "svcproxy endpointslices"}).RunWithContext(ctx)

	synced := []cache.InformerSynced{services.HasSynced, slices.HasSynced}
	if s.NodeName != "" {
		nodeSynced, err := s.startNodeInformer(ctx)
		if err != nil {
			return err
		}
		synced = append(synced, nodeSynced)
	}
	klog.InfoS("Waiting for the API server's Services and EndpointSlices", "node", s.NodeName)
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return fmt.Errorf("kube source: initial lists did not complete: %w", context.Cause(ctx))
	}
	klog.InfoS("Kube source synced", "services", services.Len(), "endpointSlices", slices.Len())
	return nil
}

// startNodeInformer watches this node's Node object only.
func (s *Source) startNodeInformer(ctx context.Context) (cache.InformerSynced, error) {
	factory := informers.NewSharedInformerFactoryWithOptions(s.Client, s.ResyncPeriod,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", s.NodeName).String()
		}),
		informers.WithTransform(Transform))
	inf := factory.Core().V1().Nodes().Informer()
	set := func(obj any) {
		node, ok := obj.(*v1.Node)
		if !ok {
			return
		}
		s.node.Store(node)
		if s.OnNode != nil {
			s.OnNode(node)
		}
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    set,
		UpdateFunc: func(_, obj any) { set(obj) },
		DeleteFunc: func(any) {
			s.node.Store(nil)
			if s.OnNode != nil {
				s.OnNode(nil)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("kube source: node handler: %w", err)
	}
	factory.Start(ctx.Done())
	return reg.HasSynced, nil
}

// Node returns the latest Node object seen for NodeName, or nil if none
// (not watched, not found, or deleted). The object must not be modified.
func (s *Source) Node() *v1.Node { return s.node.Load() }

// deletedKey returns the key of a deleted object, tombstones included.
func deletedKey(obj any) (types.NamespacedName, bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	m, err := metaOf(obj)
	if err != nil {
		klog.ErrorS(err, "Ignoring a deletion of an unexpected object", "type", fmt.Sprintf("%T", obj))
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: m.GetNamespace(), Name: m.GetName()}, true
}

func metaOf(obj any) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no object metadata", obj)
	}
	return m, nil
}

// NewClient returns an API client from a kubeconfig file and/or a master URL
// (kube-proxy's --kubeconfig and --master), or the in-cluster configuration
// when both are empty. QPS, burst and content types come from cc (zero
// values keep client-go's defaults).
func NewClient(cc componentbaseconfig.ClientConnectionConfiguration, master string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if cc.Kubeconfig == "" && master == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --kubeconfig or --master given and not running in a cluster: %w", err)
		}
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags(master, cc.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("API client configuration (kubeconfig %q, master %q): %w", cc.Kubeconfig, master, err)
		}
	}
	cfg.UserAgent = "svcproxy"
	if cc.QPS > 0 {
		cfg.QPS = cc.QPS
	}
	if cc.Burst > 0 {
		cfg.Burst = int(cc.Burst)
	}
	if cc.ContentType != "" {
		cfg.ContentType = cc.ContentType
	}
	if cc.AcceptContentTypes != "" {
		cfg.AcceptContentTypes = cc.AcceptContentTypes
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	return client, nil
}
