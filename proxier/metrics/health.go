package metrics

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"
)

// ProxierHealth is one IP family's part of ProxyHealth.
type ProxierHealth struct {
	LastUpdated time.Time `json:"lastUpdated"`
	Healthy     bool      `json:"healthy"`
}

// ProxyHealth is the JSON body of /healthz and /livez, field for field
// kube-proxy's.
type ProxyHealth struct {
	LastUpdated time.Time `json:"lastUpdated"`
	CurrentTime time.Time `json:"currentTime"`
	// NodeEligible is only set by /healthz.
	NodeEligible *bool                         `json:"nodeEligible,omitempty"`
	Healthy      bool                          `json:"healthy"`
	Status       map[v1.IPFamily]ProxierHealth `json:"status,omitempty"`
}

// HealthOptions configures a HealthServer.
type HealthOptions struct {
	// Timeout is how long a queued change may wait for a successful sync
	// before the proxy is unhealthy; kube-proxy uses 2 × syncPeriod.
	Timeout time.Duration
	// NodeEligible, if set, says whether this node may take load balancer
	// traffic (kube-proxy: the Node exists, is not being deleted and has no
	// ToBeDeletedByClusterAutoscaler taint). Nil means always eligible
	// (e.g. with the file source, which has no Node).
	NodeEligible func() bool
	// Metrics, if set, counts the answers (kubeproxy_proxy_healthz_total,
	// kubeproxy_proxy_livez_total).
	Metrics *Metrics
	// Clock is injected for tests; nil means the real clock.
	Clock clock.PassiveClock
}

// HealthServer answers /healthz and /livez as kube-proxy does: the proxy is
// unhealthy when a change (or a retry after a failed sync) has been waiting
// longer than Timeout for a successful sync; otherwise healthy. /healthz is
// also 503 when the node is not eligible for load balancer traffic; /livez
// ignores the node. Bodies are kube-proxy's JSON (ProxyHealth).
//
// Call Updated once when the sync loop starts (so a proxy whose syncs never
// succeed turns unhealthy), then after every successful sync; call
// QueuedUpdate for every queued change.
type HealthServer struct {
	opts HealthOptions

	mu           sync.Mutex
	lastUpdated  time.Time
	oldestQueued time.Time // zero when nothing is pending
}

// NewHealthServer returns a health server; its Handler serves the paths.
func NewHealthServer(opts HealthOptions) *HealthServer {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	return &HealthServer{opts: opts}
}

// Updated records a successful sync: nothing is pending any more.
func (h *HealthServer) Updated() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastUpdated = h.opts.Clock.Now()
	h.oldestQueued = time.Time{}
}

// QueuedUpdate records that a sync is owed; the oldest pending one counts.
func (h *HealthServer) QueuedUpdate() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.oldestQueued.IsZero() {
		h.oldestQueued = h.opts.Clock.Now()
	}
}

// Health returns the current health, without the node's eligibility.
func (h *HealthServer) Health() ProxyHealth {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.opts.Clock.Now()
	health := ProxyHealth{CurrentTime: now, LastUpdated: h.lastUpdated, Healthy: true}
	if h.lastUpdated.IsZero() {
		return health // the sync loop has not started: kube-proxy says healthy
	}
	if !h.oldestQueued.IsZero() && now.Sub(h.oldestQueued) >= h.opts.Timeout {
		health.Healthy = false
	}
	health.Status = map[v1.IPFamily]ProxierHealth{
		v1.IPv4Protocol: {LastUpdated: h.lastUpdated, Healthy: health.Healthy},
	}
	return health
}

// Healthy reports Health().Healthy.
func (h *HealthServer) Healthy() bool { return h.Health().Healthy }

// Handler serves /healthz and /livez.
func (h *HealthServer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		health := h.Health()
		eligible := h.opts.NodeEligible == nil || h.opts.NodeEligible()
		health.NodeEligible = &eligible
		h.write(w, health, health.Healthy && eligible, h.counter(true))
	})
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) {
		health := h.Health()
		h.write(w, health, health.Healthy, h.counter(false))
	})
	return mux
}

func (h *HealthServer) counter(healthz bool) func(code int) {
	return func(code int) {
		if h.opts.Metrics == nil {
			return
		}
		vec := h.opts.Metrics.livezTotal
		if healthz {
			vec = h.opts.Metrics.healthzTotal
		}
		vec.WithLabelValues(strconv.Itoa(code)).Inc()
	}
}

// write sends the answer; like kube-proxy, a healthy answer reports the
// current time as lastUpdated.
func (h *HealthServer) write(w http.ResponseWriter, health ProxyHealth, ok bool, count func(int)) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	code := http.StatusServiceUnavailable
	if ok {
		code = http.StatusOK
		health.LastUpdated = health.CurrentTime
	}
	count(code)
	w.WriteHeader(code)
	body, _ := json.Marshal(health)
	_, _ = w.Write(body)
}
