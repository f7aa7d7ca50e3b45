package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/svcproxy/svcproxy/proxier"
)

// Serve serves h on addr until ctx ends, then shuts the server down. An
// empty addr serves nothing and returns when ctx ends. It returns an error
// only when it cannot listen or the server fails.
func Serve(ctx context.Context, addr string, h http.Handler) error {
	if addr == "" {
		<-ctx.Done()
		return nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	err = srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		<-done
		return nil
	}
	return fmt.Errorf("serve %s: %w", addr, err)
}

// MetricsHandler serves the metrics server's paths, as kube-proxy's
// metrics address does: /metrics, /proxyMode (the mode's name) and /healthz
// (always "ok": the server is up).
func MetricsHandler(m *Metrics, mode string) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	mux.HandleFunc("/proxyMode", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = fmt.Fprint(w, mode)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = fmt.Fprint(w, "ok")
	})
	return mux
}

// SyncHook returns the function to set as proxier.Engine.OnSync: after every
// sync it feeds the metrics (with the proxier's rule counts from rules),
// tells the health server (a success is an update; a failure leaves a retry
// owed, which turns /healthz red if it lasts), and syncs the health-check
// node ports. Any of m, hs, shs and rules may be nil.
func SyncHook(m *Metrics, hs *HealthServer, shs *ServiceHealthServer, rules func() map[string]int, node proxier.Node) func(proxier.SyncReport) {
	return func(r proxier.SyncReport) {
		if m != nil {
			var counts map[string]int
			if rules != nil && r.Err == nil {
				counts = rules()
			}
			m.ObserveSync(r, counts, node)
		}
		if hs != nil {
			if r.Err == nil {
				hs.Updated()
			} else {
				hs.QueuedUpdate()
			}
		}
		if shs != nil && r.Err == nil {
			_ = shs.Sync(r.Snapshot, node) // failures are logged and retried next sync
		}
	}
}

// QueueingSink wraps the sink a source feeds (the tracker) so every change
// is counted and timed as queued before it is forwarded (so a sync it
// triggers always comes after), as kube-proxy does: the service and
// endpoint change counters, the last-queued timestamp and the health
// server's pending update. m and hs may be nil.
type QueueingSink struct {
	Sink    proxier.Sink
	Metrics *Metrics
	Health  *HealthServer
}

var _ proxier.Sink = (*QueueingSink)(nil)

func (q *QueueingSink) queued(service bool) {
	if q.Metrics != nil {
		q.Metrics.Queued(time.Now(), service)
	}
	if q.Health != nil {
		q.Health.QueuedUpdate()
	}
}

// UpdateService forwards and records a service change.
func (q *QueueingSink) UpdateService(svc *v1.Service) {
	q.queued(true)
	q.Sink.UpdateService(svc)
}

// DeleteService forwards and records a service change.
func (q *QueueingSink) DeleteService(key types.NamespacedName) {
	q.queued(true)
	q.Sink.DeleteService(key)
}

// UpdateEndpointSlice forwards and records an endpoint change.
func (q *QueueingSink) UpdateEndpointSlice(slice *discovery.EndpointSlice) {
	q.queued(false)
	q.Sink.UpdateEndpointSlice(slice)
}

// DeleteEndpointSlice forwards and records an endpoint change.
func (q *QueueingSink) DeleteEndpointSlice(key types.NamespacedName) {
	q.queued(false)
	q.Sink.DeleteEndpointSlice(key)
}
