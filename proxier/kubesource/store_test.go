package kubesource

import (
	"slices"
	"testing"

	"k8s.io/client-go/tools/cache"
)

// TestForwardingStore drives the store as a reflector does and checks what
// reaches the sink.
func TestForwardingStore(t *testing.T) {
	web, api := service("web", nil), service("api", nil)
	webChanged := service("web", nil)
	webChanged.Spec.Ports[0].Port = 81
	webLabelled := service("web", map[string]string{"team": "blue"}) // trimmed away
	steps := []struct {
		name string
		do   func(f *forwardingStore)
		want []string // events, in order
	}{
		{"initial list", func(f *forwardingStore) { _ = f.Replace([]any{web, api}, "1") }, []string{"service+ ns/web", "service+ ns/api"}},
		{"an update that changes nothing the proxy reads", func(f *forwardingStore) { _ = f.Update(webLabelled) }, nil},
		{"a real update", func(f *forwardingStore) { _ = f.Update(webChanged) }, []string{"service+ ns/web"}},
		{"relist without api, web unchanged", func(f *forwardingStore) { _ = f.Replace([]any{service("web", nil)}, "2") },
			[]string{"service+ ns/web", "service- ns/api"}},
		{"tombstone delete", func(f *forwardingStore) {
			_ = f.Delete(cache.DeletedFinalStateUnknown{Key: "ns/web", Obj: service("web", nil)})
		}, []string{"service- ns/web"}},
		{"delete of an unknown object", func(f *forwardingStore) { _ = f.Delete(service("ghost", nil)) }, nil},
		{"resync", func(f *forwardingStore) { _ = f.Resync() }, nil},
	}
	sink := newFakeSink()
	f := &forwardingStore{kind: "Service", sink: sink, changed: serviceFingerprint, forward: forwardService}
	if f.HasSynced() {
		t.Fatal("synced before the first list")
	}
	for _, st := range steps {
		before := len(sink.Events())
		st.do(f)
		got := sink.Events()[before:]
		if st.name == "initial list" {
			slices.Sort(got)
			slices.Sort(st.want)
		}
		if !slices.Equal(got, st.want) {
			t.Errorf("%s: events %v, want %v", st.name, got, st.want)
		}
	}
	if !f.HasSynced() || f.Len() != 0 {
		t.Errorf("synced %v, %d objects known", f.HasSynced(), f.Len())
	}
}
