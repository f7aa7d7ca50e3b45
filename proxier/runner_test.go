package proxier_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/svcproxy/svcproxy/proxier"
)

// waitLimit bounds every wait for an event from another goroutine; it only
// turns a hang into a failure and never decides a result.
const waitLimit = 10 * time.Second

// timerClock is a fake clock that reports every timer the runner arms, so a
// test knows when the runner is waiting and for how long. The runner arms
// exactly one timer per loop iteration, and the report is sent after the
// timer is registered, so a Step after reading it fires it.
type timerClock struct {
	*clocktesting.FakeClock
	timers chan time.Duration
}

var _ clock.WithTicker = (*timerClock)(nil)

func newTimerClock() *timerClock {
	return &timerClock{FakeClock: clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), timers: make(chan time.Duration)}
}

func (c *timerClock) NewTimer(d time.Duration) clock.Timer {
	t := c.FakeClock.NewTimer(d)
	c.timers <- d
	return t
}

// runnerHarness runs a Runner whose SyncFunc reports each call on calls and
// returns what the test sends on results.
type runnerHarness struct {
	t       *testing.T
	clk     *timerClock
	calls   chan bool
	results chan error
	runner  *proxier.Runner
}

func startRunner(t *testing.T, opts proxier.RunnerOptions) *runnerHarness {
	h := &runnerHarness{t: t, clk: newTimerClock(), calls: make(chan bool), results: make(chan error)}
	opts.Clock = h.clk
	h.runner = proxier.NewRunner(func(ctx context.Context, full bool) error {
		h.calls <- full
		return <-h.results
	}, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.runner.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		for {
			select {
			case <-done:
				return
			case <-h.clk.timers:
			case <-h.calls:
				h.results <- ctx.Err()
			}
		}
	})
	return h
}

// timer waits for the runner to arm its next timer and returns its duration.
func (h *runnerHarness) timer() time.Duration {
	h.t.Helper()
	select {
	case d := <-h.clk.timers:
		return d
	case full := <-h.calls:
		h.t.Fatalf("unexpected sync (full=%v) while waiting for a timer", full)
	case <-time.After(waitLimit):
		h.t.Fatal("the runner armed no timer")
	}
	return 0
}

// expectTimer waits for the next timer and checks its duration.
func (h *runnerHarness) expectTimer(want time.Duration) {
	h.t.Helper()
	if got := h.timer(); got != want {
		h.t.Fatalf("runner waits %v, want %v", got, want)
	}
}

// fire advances the clock by d and expects a sync; it returns whether the
// sync was full. The sync blocks until finish.
func (h *runnerHarness) fire(d time.Duration) bool {
	h.t.Helper()
	h.clk.Step(d)
	select {
	case full := <-h.calls:
		return full
	case d := <-h.clk.timers:
		h.t.Fatalf("the runner armed a %v timer instead of syncing", d)
	case <-time.After(waitLimit):
		h.t.Fatal("no sync after the timer fired")
	}
	return false
}

func (h *runnerHarness) finish(err error) { h.results <- err }

func TestRunnerFirstSyncAndPeriodic(t *testing.T) {
	h := startRunner(t, proxier.RunnerOptions{MinInterval: time.Second, MaxInterval: 30 * time.Second})
	h.expectTimer(0)
	if !h.fire(0) {
		t.Fatal("first sync is not full")
	}
	h.finish(nil)
	for range 2 {
		h.expectTimer(30 * time.Second)
		if !h.fire(30 * time.Second) {
			t.Fatal("periodic sync is not full")
		}
		h.finish(nil)
	}
}

func TestRunnerCoalescesAndRespectsMinInterval(t *testing.T) {
	h := startRunner(t, proxier.RunnerOptions{MinInterval: time.Second, MaxInterval: 30 * time.Second})
	h.expectTimer(0)
	h.fire(0)
	// A burst of triggers during a sync costs one more sync.
	for range 5 {
		h.runner.Trigger()
	}
	h.finish(nil)
	h.expectTimer(30 * time.Second) // armed after the sync...
	h.expectTimer(time.Second)      // ...then the pending trigger: MinInterval after the last start
	if h.fire(time.Second) {
		t.Fatal("a triggered sync is full")
	}
	h.finish(nil)
	// Nothing else is pending: the next sync is the periodic full one.
	h.expectTimer(30 * time.Second)

	// A trigger 400ms after a sync waits out the rest of MinInterval.
	h.clk.Step(400 * time.Millisecond)
	h.runner.Trigger()
	h.expectTimer(600 * time.Millisecond)
	// A second trigger while waiting does not move the deadline.
	h.clk.Step(100 * time.Millisecond)
	h.runner.Trigger()
	h.expectTimer(500 * time.Millisecond)
	if h.fire(500 * time.Millisecond) {
		t.Fatal("a triggered sync is full")
	}
	h.finish(nil)
	h.expectTimer(30 * time.Second)

	// A trigger long after the last sync runs at once.
	h.clk.Step(10 * time.Second)
	h.runner.Trigger()
	h.expectTimer(0)
	h.fire(0)
	h.finish(nil)
	h.expectTimer(30 * time.Second)
}

func TestRunnerBackoff(t *testing.T) {
	h := startRunner(t, proxier.RunnerOptions{MinInterval: time.Second, MaxInterval: time.Minute, RetryInitial: time.Second, RetryMax: 5 * time.Second})
	boom := errors.New("boom")
	h.expectTimer(0)
	h.fire(0)
	h.finish(boom)
	h.expectTimer(time.Second) // the runner has recorded the result once it waits again
	if _, err := h.runner.LastResult(); !errors.Is(err, boom) {
		t.Fatalf("LastResult error %v, want %v", err, boom)
	}
	wait := time.Second
	for _, next := range []time.Duration{2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second} {
		if !h.fire(wait) {
			t.Fatal("a retry after a failure is not full")
		}
		h.finish(boom)
		h.expectTimer(next) // doubling, capped at RetryMax
		wait = next
	}
	// A trigger during backoff keeps the retry schedule.
	h.clk.Step(time.Second)
	h.runner.Trigger()
	h.expectTimer(4 * time.Second)
	if !h.fire(4 * time.Second) {
		t.Fatal("a retry after a failure is not full")
	}
	h.finish(nil)
	h.expectTimer(time.Minute)
	last, err := h.runner.LastResult()
	if err != nil || !last.Equal(h.clk.Now()) {
		t.Fatalf("LastResult after success = %v, %v; want %v, nil", last, err, h.clk.Now())
	}
	// Success resets the backoff: a trigger now waits MinInterval, and a
	// later failure starts again at RetryInitial.
	h.runner.Trigger()
	h.expectTimer(time.Second)
	if h.fire(time.Second) {
		t.Fatal("a triggered sync after success is full")
	}
	h.finish(boom)
	h.expectTimer(time.Second)
}

func TestRunnerTriggerNeverBlocks(t *testing.T) {
	r := proxier.NewRunner(func(context.Context, bool) error { return nil }, proxier.RunnerOptions{})
	done := make(chan struct{})
	go func() {
		for range 1000 {
			r.Trigger() // nobody runs r
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(waitLimit):
		t.Fatal("Trigger blocked")
	}
}

func TestRunnerStopsWithContext(t *testing.T) {
	clk := newTimerClock()
	r := proxier.NewRunner(func(context.Context, bool) error { return nil }, proxier.RunnerOptions{Clock: clk})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	<-clk.timers
	cancel()
	select {
	case <-done:
	case <-time.After(waitLimit):
		t.Fatal("Run did not return after cancel")
	}
}

// TestRunnerRetryHonorsMinInterval: a retry is still a start, so it waits
// for MinInterval when that is longer than the backoff.
func TestRunnerRetryHonorsMinInterval(t *testing.T) {
	h := startRunner(t, proxier.RunnerOptions{MinInterval: 5 * time.Second, MaxInterval: time.Minute, RetryInitial: time.Second, RetryMax: 8 * time.Second})
	h.expectTimer(0)
	h.fire(0)
	h.finish(errors.New("boom"))
	h.expectTimer(5 * time.Second) // not the 1s backoff
	h.fire(5 * time.Second)
	h.finish(errors.New("boom"))
	h.expectTimer(5 * time.Second) // backoff 2s < MinInterval
	h.fire(5 * time.Second)
	h.finish(errors.New("boom"))
	h.expectTimer(5 * time.Second) // 4s
	h.fire(5 * time.Second)
	h.finish(errors.New("boom"))
	h.expectTimer(8 * time.Second) // 8s: the backoff wins
}

// TestRunnerDefaultRetryMax: without RetryMax the backoff still doubles (up
// to MaxInterval) instead of staying at RetryInitial.
func TestRunnerDefaultRetryMax(t *testing.T) {
	h := startRunner(t, proxier.RunnerOptions{MinInterval: time.Second, MaxInterval: 30 * time.Second})
	h.expectTimer(0)
	h.fire(0)
	wait := time.Second
	for _, next := range []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second} {
		h.finish(errors.New("boom"))
		h.expectTimer(wait)
		h.fire(wait)
		wait = next
	}
	h.finish(nil)
	h.expectTimer(30 * time.Second)
}
