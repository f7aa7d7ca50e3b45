package kubesource

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"sync"
	"sync/atomic"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
)

// forwardingStore is a cache.ReflectorStore that keeps no objects: it
// trims each object, forwards it to the sink, and remembers only its key and
// a fingerprint of what the proxy reads, so that updates that change nothing
// the proxy reads (a label, a managed field, a resync) cost nothing, and a
// relist can tell which objects went away.
type forwardingStore struct {
	kind    string
	sink    proxier.Sink
	changed func(obj any) (uint64, bool)
	forward func(sink proxier.Sink, obj any, deleted bool, key types.NamespacedName)

	mu     sync.Mutex
	seen   map[types.NamespacedName]uint64
	synced atomic.Bool
}

var _ cache.ReflectorStore = (*forwardingStore)(nil)

// HasSynced reports whether the first list was delivered.
func (f *forwardingStore) HasSynced() bool { return f.synced.Load() }

// Len returns how many objects the store knows.
func (f *forwardingStore) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.seen)
}

// Add forwards a new or changed object.
func (f *forwardingStore) Add(obj any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.upsert(obj)
	return nil
}

// Update forwards a changed object.
func (f *forwardingStore) Update(obj any) error { return f.Add(obj) }

// Delete forwards a deletion.
func (f *forwardingStore) Delete(obj any) error {
	key, ok := deletedKey(obj)
	if !ok {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, known := f.seen[key]; !known {
		return nil
	}
	delete(f.seen, key)
	f.forward(f.sink, nil, true, key)
	return nil
}

// Replace is a (re)list: every listed object is forwarded if new or
// changed, every known object missing from the list is deleted.
func (f *forwardingStore) Replace(list []any, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seen == nil {
		f.seen = make(map[types.NamespacedName]uint64, len(list))
	}
	listed := make(map[types.NamespacedName]bool, len(list))
	for _, obj := range list {
		if key, ok := f.upsert(obj); ok {
			listed[key] = true
		}
	}
	for key := range f.seen {
		if !listed[key] {
			delete(f.seen, key)
			f.forward(f.sink, nil, true, key)
		}
	}
	f.synced.Store(true)
	return nil
}

// Resync does nothing: there is no cache to replay.
func (f *forwardingStore) Resync() error { return nil }

// upsert forwards obj unless its fingerprint is the one already seen.
// Callers hold f.mu.
func (f *forwardingStore) upsert(obj any) (types.NamespacedName, bool) {
	if _, err := Transform(obj); err != nil {
		return types.NamespacedName{}, false
	}
	m, err := metaOf(obj)
	if err != nil {
		klog.ErrorS(err, "Ignoring an unexpected object", "kind", f.kind)
		return types.NamespacedName{}, false
	}
	key := types.NamespacedName{Namespace: m.GetNamespace(), Name: m.GetName()}
	fp, ok := f.changed(obj)
	if !ok {
		return key, false
	}
	if f.seen == nil {
		f.seen = map[types.NamespacedName]uint64{}
	}
	if old, known := f.seen[key]; known && old == fp {
		return key, true
	}
	f.seen[key] = fp
	f.forward(f.sink, obj, false, key)
	return key, true
}

// fingerprint hashes the JSON of the parts given.
func fingerprint(parts ...any) uint64 {
	h := fnv.New64a()
	enc := json.NewEncoder(h)
	for _, p := range parts {
		_ = enc.Encode(p)
	}
	return h.Sum64()
}

// serviceFingerprint covers what the proxy reads of a trimmed Service.
func serviceFingerprint(obj any) (uint64, bool) {
	svc, ok := obj.(*v1.Service)
	if !ok {
		klog.ErrorS(fmt.Errorf("got %T", obj), "Ignoring an object that is not a Service")
		return 0, false
	}
	return fingerprint(svc.Spec, svc.Status, svc.Annotations), true
}

// sliceFingerprint covers what the proxy reads of a trimmed EndpointSlice.
func sliceFingerprint(obj any) (uint64, bool) {
	s, ok := obj.(*discovery.EndpointSlice)
	if !ok {
		klog.ErrorS(fmt.Errorf("got %T", obj), "Ignoring an object that is not an EndpointSlice")
		return 0, false
	}
	return fingerprint(s.AddressType, s.Labels, s.Annotations, s.Ports, s.Endpoints), true
}

func forwardService(sink proxier.Sink, obj any, deleted bool, key types.NamespacedName) {
	if deleted {
		sink.DeleteService(key)
		return
	}
	sink.UpdateService(obj.(*v1.Service))
}

func forwardSlice(sink proxier.Sink, obj any, deleted bool, key types.NamespacedName) {
	if deleted {
		sink.DeleteEndpointSlice(key)
		return
	}
	sink.UpdateEndpointSlice(obj.(*discovery.EndpointSlice))
}
