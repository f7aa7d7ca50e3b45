package proxier_test

import (
	"context"
	"errors"
	"io"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxier"
)

// syncCall is one call of fakeProxier.Sync, with copies of its arguments.
type syncCall struct {
	snap    proxier.Snapshot
	changes proxier.Changes
}

// fakeProxier reports every Sync on calls and returns what the test sends
// on results.
type fakeProxier struct {
	calls   chan syncCall
	results chan error
}

var _ proxier.Proxier = (*fakeProxier)(nil)

func (f *fakeProxier) Sync(ctx context.Context, snap proxier.Snapshot, ch proxier.Changes) error {
	ch.Services = maps.Clone(ch.Services)
	f.calls <- syncCall{snap: snap, changes: ch}
	return <-f.results
}
func (f *fakeProxier) Cleanup(context.Context) error { return nil }
func (f *fakeProxier) RuleCounts() map[string]int    { return nil }
func (f *fakeProxier) Explain(context.Context, io.Writer, v1.Protocol, netip.AddrPort) error {
	return nil
}

func TestEngineCarriesFailedChanges(t *testing.T) {
	clk := newTimerClock()
	fp := &fakeProxier{calls: make(chan syncCall), results: make(chan error)}
	e := proxier.NewEngine(fp, proxier.RunnerOptions{Clock: clk, MinInterval: time.Second, MaxInterval: time.Hour, RetryInitial: time.Second})
	reports := make(chan proxier.SyncReport, 10)
	e.OnSync = func(r proxier.SyncReport) { reports <- r }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	defer func() {
		cancel()
		for {
			select {
			case <-done:
				return
			case <-clk.timers:
			case <-fp.calls:
				fp.results <- ctx.Err()
			}
		}
	}()

	timer := func(want time.Duration) {
		t.Helper()
		select {
		case d := <-clk.timers:
			if d != want {
				t.Fatalf("runner waits %v, want %v", d, want)
			}
		case <-time.After(waitLimit):
			t.Fatal("no timer armed")
		}
	}
	sync := func(step time.Duration) syncCall {
		t.Helper()
		clk.Step(step)
		select {
		case c := <-fp.calls:
			return c
		case <-time.After(waitLimit):
			t.Fatal("no Sync")
		}
		return syncCall{}
	}
	report := func() proxier.SyncReport {
		t.Helper()
		select {
		case r := <-reports:
			return r
		case <-time.After(waitLimit):
			t.Fatal("no SyncReport")
		}
		return proxier.SyncReport{}
	}

	// 1: the first sync is full; updates arrive while it runs.
	timer(0)
	c := sync(0)
	if !c.changes.Full || len(c.snap.Services) != 0 {
		t.Fatalf("first sync: full=%v services=%d", c.changes.Full, len(c.snap.Services))
	}
	e.Tracker.UpdateService(service("a", "172.30.0.1"))
	e.Tracker.UpdateEndpointSlice(slice("a-1", "a", "http", 8080, v1.ProtocolTCP, ep{ip: "10.0.1.1"}))
	fp.results <- nil
	report()

	// 2: a partial sync with a's change fails; b changes meanwhile.
	timer(time.Hour)
	timer(time.Second)
	c = sync(time.Second)
	if c.changes.Full || !slices.Equal(changed(c.changes), []string{"ns/a:http"}) {
		t.Fatalf("second sync: full=%v changed=%v, want partial with ns/a:http", c.changes.Full, changed(c.changes))
	}
	e.Tracker.UpdateService(service("b", "172.30.0.2"))
	fp.results <- errors.New("iptables-restore failed")
	if r := report(); r.Err == nil {
		t.Fatal("the failed sync's report has no error")
	}

	// 3: the retry is full and still carries a's change, plus b's.
	timer(time.Second)
	timer(time.Second) // b's trigger does not shorten the backoff
	c = sync(time.Second)
	if !c.changes.Full || !slices.Equal(changed(c.changes), []string{"ns/a:http", "ns/b:http"}) {
		t.Fatalf("retry: full=%v changed=%v, want full with ns/a:http and ns/b:http", c.changes.Full, changed(c.changes))
	}
	if len(c.snap.Services) != 2 || len(c.snap.Endpoints[httpPort("a")]) != 1 {
		t.Fatalf("retry snapshot: %d services, a's endpoints %v", len(c.snap.Services), c.snap.Endpoints[httpPort("a")])
	}
	fp.results <- nil
	if r := report(); r.Err != nil || !r.Full || r.Services != 2 {
		t.Fatalf("retry report %+v, want success, full, 2 services", r)
	}

	// 4: after success the carried changes are gone.
	timer(time.Hour)
	e.Tracker.DeleteService(key("b"))
	timer(time.Second) // MinInterval after the last start
	c = sync(time.Second)
	if c.changes.Full || !slices.Equal(changed(c.changes), []string{"ns/b:http"}) {
		t.Fatalf("after success: full=%v changed=%v, want partial with only ns/b:http", c.changes.Full, changed(c.changes))
	}
	fp.results <- nil
	report()
	if last, err := e.LastResult(); err != nil || last.IsZero() {
		t.Fatalf("LastResult = %v, %v", last, err)
	}
}
