package proxier

import (
	"context"
	"time"

	"k8s.io/klog/v2"
)

// SyncReport describes one finished sync, for metrics and logs.
type SyncReport struct {
	Start    time.Time
	Duration time.Duration
	Full     bool
	// Services is how many service ports the sync rewrote (all of them on a
	// full sync).
	Services int
	Err      error
	// TriggerTimes are the change times the sync made effective.
	TriggerTimes []time.Time
	// Snapshot is the state the sync handed to the proxier (in force when
	// Err is nil). Consumers such as the health-check node port server and
	// the metrics read it; they must not modify it.
	Snapshot Snapshot
}

// Engine ties a source, the tracker, the sync runner and a Proxier together:
// sources feed Engine.Tracker, every change triggers the runner, every sync
// commits the tracker and hands the snapshot to the proxier. A failed sync's
// changes are carried into the next attempt, which is a full sync.
type Engine struct {
	// Tracker is the sink sources feed.
	Tracker *Tracker
	proxier Proxier
	runner  *Runner
	// carry holds changes of failed syncs.
	carry Changes
	// OnSync, if set, is called after every sync (from the sync goroutine).
	OnSync func(SyncReport)
}

// NewEngine returns an engine for p; Run starts it.
func NewEngine(p Proxier, opts RunnerOptions) *Engine {
	e := &Engine{proxier: p}
	e.runner = NewRunner(e.sync, opts)
	e.Tracker = NewTracker(e.runner.Trigger)
	return e
}

// Run syncs until ctx ends. Start the sources first, so the first sync sees
// their initial state.
func (e *Engine) Run(ctx context.Context) { e.runner.Run(ctx) }

// LastResult returns the time of the last successful sync and the error of
// the last sync if it failed.
func (e *Engine) LastResult() (time.Time, error) { return e.runner.LastResult() }

func (e *Engine) sync(ctx context.Context, full bool) error {
	start := time.Now()
	snap, ch := e.Tracker.Commit()
	e.carry.Merge(ch)
	e.carry.Full = e.carry.Full || full
	err := e.proxier.Sync(ctx, snap, e.carry)
	report := SyncReport{Start: start, Duration: time.Since(start), Full: e.carry.Full, Services: len(e.carry.Services), Err: err, Snapshot: snap}
	if report.Full {
		report.Services = len(snap.Services)
	}
	if err == nil {
		ClearStaleUDP(snap, e.carry)
		report.TriggerTimes = e.carry.TriggerTimes
		e.carry = Changes{}
		klog.V(2).InfoS("Synced", "full", report.Full, "services", report.Services, "duration", report.Duration)
	}
	if e.OnSync != nil {
		e.OnSync(report)
	}
	return err
}
