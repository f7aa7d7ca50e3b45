package proxier

import (
	"context"
	"sync"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// RunnerOptions configures a Runner.
type RunnerOptions struct {
	// MinInterval is the shortest time between two syncs: triggers that
	// arrive sooner are coalesced into one sync at the end of the interval.
	MinInterval time.Duration
	// MaxInterval is the longest time without a sync: when it passes, a
	// full resync runs even with no trigger (repairing drift).
	MaxInterval time.Duration
	// RetryInitial and RetryMax bound the exponential backoff between
	// retries of a failed sync (defaults: 1s, and MaxInterval).
	RetryInitial time.Duration
	RetryMax     time.Duration
	// Clock is injected so tests need no sleeps; nil means the real clock.
	Clock clock.WithTicker
}

// SyncFunc is one sync. full is true for the periodic resync and for the
// first sync after a failure.
type SyncFunc func(ctx context.Context, full bool) error

// Runner calls a SyncFunc with these guarantees:
//   - every Trigger is followed by a sync that starts after it;
//   - two syncs never run at once, and two starts are at least MinInterval
//     apart (a burst of triggers costs one sync);
//   - a sync runs at least every MaxInterval, with full=true;
//   - after a failed sync the next one is a full sync, retried after a
//     backoff that doubles from RetryInitial up to RetryMax (and never
//     sooner than MinInterval after the failed start), and resets after a
//     success; triggers during the backoff do not shorten it.
type Runner struct {
	opts    RunnerOptions
	fn      SyncFunc
	trigger chan struct{}

	mu       sync.Mutex
	lastErr  error
	lastSync time.Time
}

// NewRunner returns a runner for fn; Run starts it.
func NewRunner(fn SyncFunc, opts RunnerOptions) *Runner {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.MaxInterval <= 0 {
		opts.MaxInterval = time.Hour
	}
	if opts.RetryInitial <= 0 {
		opts.RetryInitial = time.Second
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = opts.MaxInterval
	}
	if opts.RetryMax < opts.RetryInitial {
		opts.RetryMax = opts.RetryInitial
	}
	return &Runner{opts: opts, fn: fn, trigger: make(chan struct{}, 1)}
}

// Trigger asks for a sync as soon as the guarantees allow. It never blocks.
func (r *Runner) Trigger() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// LastResult returns the time of the last successful sync and the error of
// the last sync, if it failed.
func (r *Runner) LastResult() (time.Time, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastSync, r.lastErr
}

// Run syncs once at once and then as the guarantees say, until ctx ends.
func (r *Runner) Run(ctx context.Context) {
	c := r.opts.Clock
	var backoff time.Duration
	var lastStart time.Time
	full := true    // the next sync rewrites everything
	pending := true // a sync is owed (the first one, a trigger, a retry)
	due := c.Now()  // when the next sync starts
	for {
		timer := c.NewTimer(max(0, due.Sub(c.Now())))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-r.trigger:
			timer.Stop()
			pending = true
			if backoff == 0 {
				// as soon as MinInterval since the last start allows;
				// a failing sync keeps its retry schedule instead
				soon := lastStart.Add(r.opts.MinInterval)
				if now := c.Now(); soon.Before(now) {
					soon = now
				}
				if soon.Before(due) {
					due = soon
				}
			}
			continue
		case <-timer.C():
		}
		if !pending {
			full = true // MaxInterval passed: periodic resync
		}
		lastStart = c.Now()
		err := r.fn(ctx, full)
		r.mu.Lock()
		r.lastErr = err
		if err == nil {
			r.lastSync = c.Now()
		}
		r.mu.Unlock()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			backoff = min(max(backoff*2, r.opts.RetryInitial), r.opts.RetryMax)
			klog.ErrorS(err, "Sync failed; the previous rules stay in place", "retryIn", backoff)
			// a retry is a start too: not sooner than MinInterval
			full, pending, due = true, true, c.Now().Add(backoff)
			if soon := lastStart.Add(r.opts.MinInterval); soon.After(due) {
				due = soon
			}
			continue
		}
		backoff = 0
		full, pending, due = false, false, c.Now().Add(r.opts.MaxInterval)
	}
}
