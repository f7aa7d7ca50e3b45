package metrics

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestHealthServer(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const timeout = time.Minute // 2 × a 30s syncPeriod
	tests := []struct {
		name string
		// steps runs against the server and the clock, starting at t0.
		steps        func(h *HealthServer, c *clocktesting.FakePassiveClock)
		eligible     bool
		wantHealthz  int
		wantLivez    int
		wantLastSync time.Time // the lastUpdated of an unhealthy answer
	}{
		{"before the sync loop starts", func(*HealthServer, *clocktesting.FakePassiveClock) {}, true, 200, 200, time.Time{}},
		{"synced long ago, nothing queued", func(h *HealthServer, c *clocktesting.FakePassiveClock) {
			h.Updated()
			c.SetTime(t0.Add(time.Hour))
		}, true, 200, 200, time.Time{}},
		{"queued, not yet due", func(h *HealthServer, c *clocktesting.FakePassiveClock) {
			h.Updated()
			c.SetTime(t0.Add(10 * time.Second))
			h.QueuedUpdate()
			c.SetTime(t0.Add(10*time.Second + timeout - time.Nanosecond))
		}, true, 200, 200, time.Time{}},
		{"queued and stalled", func(h *HealthServer, c *clocktesting.FakePassiveClock) {
			h.Updated()
			c.SetTime(t0.Add(10 * time.Second))
			h.QueuedUpdate()
			c.SetTime(t0.Add(20 * time.Second))
			h.QueuedUpdate() // the oldest pending change counts
			c.SetTime(t0.Add(10*time.Second + timeout))
		}, true, 503, 503, t0},
		{"stalled, then synced", func(h *HealthServer, c *clocktesting.FakePassiveClock) {
			h.Updated()
			h.QueuedUpdate()
			c.SetTime(t0.Add(2 * timeout))
			h.Updated()
		}, true, 200, 200, time.Time{}},
		{"node not eligible: healthz only", func(h *HealthServer, c *clocktesting.FakePassiveClock) {
			h.Updated()
		}, false, 503, 200, t0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := clocktesting.NewFakePassiveClock(t0)
			m := New()
			h := NewHealthServer(HealthOptions{Timeout: timeout, Clock: clock, Metrics: m,
				NodeEligible: func() bool { return tc.eligible }})
			tc.steps(h, clock)
			srv := httptest.NewServer(h.Handler())
			defer srv.Close()

			for _, path := range []string{"/healthz", "/livez"} {
				want := tc.wantHealthz
				if path == "/livez" {
					want = tc.wantLivez
				}
				resp, err := http.Get(srv.URL + path)
				if err != nil {
					t.Fatal(err)
				}
				var body map[string]any
				err = json.NewDecoder(resp.Body).Decode(&body)
				resp.Body.Close()
				if err != nil {
					t.Fatalf("%s: body: %v", path, err)
				}
				if resp.StatusCode != want {
					t.Errorf("%s: status %d, want %d (body %v)", path, resp.StatusCode, want, body)
				}
				if resp.Header.Get("Content-Type") != "application/json" {
					t.Errorf("%s: content type %q", path, resp.Header.Get("Content-Type"))
				}
				for _, f := range []string{"lastUpdated", "currentTime", "healthy"} {
					if _, ok := body[f]; !ok {
						t.Errorf("%s: body lacks %q: %v", path, f, body)
					}
				}
				if now := clock.Now().Format(time.RFC3339Nano); body["currentTime"] != now {
					t.Errorf("%s: currentTime %v, want %s", path, body["currentTime"], now)
				}
				_, hasEligible := body["nodeEligible"]
				if hasEligible != (path == "/healthz") {
					t.Errorf("%s: nodeEligible present=%v", path, hasEligible)
				}
				if want == 200 && body["lastUpdated"] != body["currentTime"] {
					t.Errorf("%s: a healthy answer reports lastUpdated = currentTime, got %v", path, body)
				}
				if want == 503 && body["lastUpdated"] != tc.wantLastSync.Format(time.RFC3339Nano) {
					t.Errorf("%s: lastUpdated %v, want the last sync %v", path, body["lastUpdated"], tc.wantLastSync)
				}
			}
			healthz200 := testutil.ToFloat64(m.healthzTotal.WithLabelValues("200"))
			healthz503 := testutil.ToFloat64(m.healthzTotal.WithLabelValues("503"))
			if healthz200+healthz503 != 1 {
				t.Errorf("healthz answers counted: %v + %v", healthz200, healthz503)
			}
		})
	}
}
