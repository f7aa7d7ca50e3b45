// Package bench is the driver of `svcproxy bench`: every mode side by side
// (and upstream kube-proxy as a peer) on the same machine and workload, with
// a table, JSON, CSV, SVG plots and a markdown report.
//
// Each mode runs in fresh network namespaces of its own (package topology),
// inside the throwaway namespace the command re-executed itself into
// (package isolate); IPVS runs in the QEMU VM (package vm) when the host's
// kernel lacks it. Per mode and size N it measures
//
//   - the control plane in-process (like e2e/perf): the first full sync
//     into an empty node, the sync after one endpoint change (p50/p99 over
//     Options.Changes changes), the rule counts and the Go heap the
//     proxier holds;
//   - the data plane with svcproxy as a process fed by the file source on
//     the client's node of a four-node topology: its first sync, RSS and
//     CPU seconds, requests per second with a new connection each, latency
//     p50/p99, one stream's throughput, each also straight to the pods, and
//     the time from a new Service in the source to its first answer.
//
// Every figure is the median over Options.Reps repetitions after a warm-up,
// with the minimum and maximum as the spread.
package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/e2e/vm"
	"github.com/svcproxy/svcproxy/proxier"
)

// Where a mode ran.
const (
	WhereHost = "host"
	WhereVM   = "vm"
)

// Peer names for Options.Peers.
const (
	PeerKubeProxyIPTables = "kube-proxy-iptables"
	PeerKubeProxyNFTables = "kube-proxy-nftables"
)

// Options configure a run. QuickOptions and FullOptions return the presets.
type Options struct {
	// Preset names the preset the options came from ("quick", "full").
	Preset string
	// Sizes are the numbers of services N.
	Sizes []int
	// Endpoints is E, the endpoints per service.
	Endpoints int
	// Modes are the svcproxy modes to measure.
	Modes []string
	// Peers are the upstream peers to measure (Peer* names).
	Peers []string
	// Reps is the number of measured repetitions (after one warm-up).
	Reps int
	// Changes is the number of one-endpoint changes per repetition.
	Changes int
	// Requests is the number of requests per repetition and side.
	Requests int
	// StreamBytes is the size of the throughput stream.
	StreamBytes int64
	// VMRequests and VMStreamBytes replace Requests and StreamBytes in the
	// VM, where emulation makes everything about 10-50 times slower.
	VMRequests    int
	VMStreamBytes int64
	// MinSyncPeriod is the proxy's --min-sync-period in the data plane.
	MinSyncPeriod time.Duration
	// SyncTimeout bounds every wait for a sync or an answer.
	SyncTimeout time.Duration
	// VMModes are the modes that also run in the VM, beside IPVS, when the
	// host has no IPVS: like for like with IPVS. The host runs every mode
	// but IPVS in any case.
	VMModes []string
	// SkipDataPlane measures the control plane only.
	SkipDataPlane bool
	// Binary is the svcproxy executable started in namespaces and the VM.
	Binary string
	// OutDir receives REPORT.md, results.json, results.csv and the plots.
	OutDir string
	// InnerJSON, when set, makes Run write only the report's JSON there
	// (the VM half of a run); no other output is written.
	InnerJSON string
	// Out receives the progress lines and the table.
	Out io.Writer
}

// QuickOptions is the --quick preset: N = 100 and 1,000, three
// repetitions, and only IPVS in the VM (emulation makes every other mode
// take minutes there too; the full preset runs them all in the VM).
func QuickOptions() Options {
	o := FullOptions()
	o.Preset = "quick"
	o.Sizes = []int{100, 1000}
	o.Reps = 3
	o.Requests = 500
	o.VMModes = []string{proxier.ModeIPVS}
	return o
}

// FullOptions is the default preset: N = 100, 1,000 and 10,000.
func FullOptions() Options {
	return Options{
		Preset:        "full",
		Sizes:         []int{100, 1000, 10000},
		Endpoints:     3,
		Modes:         []string{proxier.ModeIPTables, proxier.ModeUserspace, proxier.ModeIPVS},
		Peers:         []string{PeerKubeProxyIPTables, PeerKubeProxyNFTables},
		VMModes:       []string{proxier.ModeIPTables, proxier.ModeUserspace, proxier.ModeIPVS},
		Reps:          5,
		Changes:       20,
		Requests:      1000,
		StreamBytes:   256 << 20,
		VMRequests:    200,
		VMStreamBytes: 16 << 20,
		MinSyncPeriod: 100 * time.Millisecond,
		SyncTimeout:   10 * time.Minute,
		Out:           io.Discard,
	}
}

// progress prints one progress line.
type progress struct {
	out   io.Writer
	n, of int
	start time.Time
}

func (p *progress) step(format string, args ...any) func(err error) {
	p.n++
	t0 := time.Now()
	fmt.Fprintf(p.out, "[%2d/%d %6s] %s ...\n", p.n, p.of, time.Since(p.start).Round(time.Second), fmt.Sprintf(format, args...))
	return func(err error) {
		status := "done"
		if err != nil {
			status = "FAILED: " + err.Error()
		}
		fmt.Fprintf(p.out, "           %s in %v\n", status, time.Since(t0).Round(10*time.Millisecond))
	}
}

// Run measures what o asks for and returns the report; unless o.InnerJSON
// is set it also writes the outputs to o.OutDir and the table to o.Out. The
// caller must already run in a throwaway network namespace
// (isolate.EnsureIsolated). A mode or peer that fails is recorded in
// Report.Absent with the error and the run goes on.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Out == nil {
		o.Out = io.Discard
	}
	where := WhereHost
	if vm.InVM() {
		where = WhereVM
	}
	rep := &Report{Started: time.Now().UTC(), Preset: o.Preset, Sizes: o.Sizes, Reps: o.Reps, Changes: o.Changes, Env: collectEnv()}
	var here, inVM []string
	needVM := where == WhereHost && !vm.HostHasIPVS() && slices.Contains(o.Modes, proxier.ModeIPVS)
	for _, m := range o.Modes {
		if !needVM || m != proxier.ModeIPVS {
			here = append(here, m)
		}
		if needVM && (m == proxier.ModeIPVS || slices.Contains(o.VMModes, m)) {
			inVM = append(inVM, m)
		}
	}
	phases := len(here) * len(o.Sizes)
	if !o.SkipDataPlane {
		phases *= 2
	}
	if len(inVM) > 0 {
		phases++
	}
	if len(o.Peers) > 0 && o.InnerJSON == "" {
		phases += len(o.Sizes)
	}
	pr := &progress{out: o.Out, of: phases, start: time.Now()}

	if len(inVM) > 0 {
		done := pr.step("modes %s in the IPVS VM (this kernel has no IPVS; QEMU TCG, expect minutes)", strings.Join(inVM, ", "))
		vmRep, err := runInVM(ctx, o, inVM)
		done(err)
		if err != nil {
			for _, m := range inVM {
				rep.Absent = append(rep.Absent, Absent{Impl: ImplSvcproxy, Mode: m, Reason: "the VM run failed: " + err.Error()})
			}
		} else {
			rep.Records = append(rep.Records, vmRep.Records...)
			rep.Absent = append(rep.Absent, vmRep.Absent...)
			rep.Env.VMKernel = vmRep.Env.Kernel
		}
	}
	for _, m := range here {
		for _, n := range o.Sizes {
			done := pr.step("control plane · %s · %d services × %d endpoints (%s)", m, n, o.Endpoints, where)
			recs, err := controlPlane(ctx, &o, m, where, n)
			done(err)
			if err != nil {
				rep.Absent = append(rep.Absent, Absent{Impl: ImplSvcproxy, Mode: m, Reason: fmt.Sprintf("control plane at %d services failed: %v", n, err)})
			}
			rep.Records = append(rep.Records, recs...)
			if o.SkipDataPlane {
				continue
			}
			done = pr.step("data plane · %s · %d services loaded (%s)", m, n, where)
			recs, err = dataPlane(ctx, &o, m, where, n)
			done(err)
			if err != nil {
				rep.Absent = append(rep.Absent, Absent{Impl: ImplSvcproxy, Mode: m, Reason: fmt.Sprintf("data plane at %d services failed: %v", n, err)})
			}
			rep.Records = append(rep.Records, recs...)
		}
	}
	if len(o.Peers) > 0 && o.InnerJSON == "" {
		cs, absent, version := peerContenders(&o)
		rep.Absent = append(rep.Absent, absent...)
		rep.Env.KubeProxy = version
		for _, n := range o.Sizes {
			var names []string
			for _, c := range cs {
				names = append(names, c.impl+"/"+c.mode)
			}
			done := pr.step("through a real kube-apiserver · %s · %d services", strings.Join(names, ", "), n)
			recs, err := peers(ctx, &o, cs, n)
			done(err)
			if err != nil {
				for _, c := range cs {
					rep.Absent = append(rep.Absent, Absent{Impl: c.impl, Mode: c.mode, Reason: fmt.Sprintf("apiserver comparison at %d services failed: %v", n, err)})
				}
			}
			rep.Records = append(rep.Records, recs...)
		}
	}
	rep.FillRatios()
	rep.Duration = time.Since(rep.Started).Round(time.Second).String()
	rep.Notes = notes(&o, where, inVM)
	if o.InnerJSON != "" {
		return rep, writeJSON(o.InnerJSON, rep)
	}
	if err := Write(rep, o.OutDir, o.Out); err != nil {
		return rep, err
	}
	return rep, nil
}

// notes explains where and how the figures were taken.
func notes(o *Options, where string, inVM []string) []string {
	n := []string{
		"Control plane: each mode's proxier is called in-process in a fresh one-node network namespace per repetition, against the real kernel; heap_mb is the Go heap the proxier retains after its first full sync (the workload excluded), not a process RSS.",
		fmt.Sprintf("Data plane: svcproxy runs as a process (file source, --min-sync-period=%v) on the client's node only, the only node on the client → ClusterIP path; the three whoami pods sit on three other nodes. rss_mb and cpu_s are that process's, read right after its first sync.", o.MinSyncPeriod),
		"Requests are sequential, one at a time, each on a new TCP connection (HTTP/1.0 GET /), alternating between the ClusterIP and the pods so that both sides see the same moment of a shared machine; rps is the inverse of the mean latency. Direct requests cycle over the three pod IPs; the direct stream comes from web1; the two streams of a repetition alternate which goes first. Requests that get no answer within 5 s are counted as failed and left out of rps and latencies.",
		"change_to_traffic_s: from writing a new Service file to the first answer through its ClusterIP (polled every 5 ms), which includes the file watch and the min sync period.",
	}
	if len(inVM) > 0 {
		n = append(n, fmt.Sprintf("This host's kernel has no IPVS, so %s ran in the QEMU VM (TCG emulation, 1 vCPU, no KVM): absolute VM figures are many times slower than the host's and must never be compared with host rows; ratios to direct within the VM are comparable. Data plane in the VM uses %d requests and a %d MiB stream per repetition.",
			strings.Join(inVM, ", "), o.VMRequests, o.VMStreamBytes>>20))
		if len(inVM) == 1 {
			n = append(n, "Only IPVS ran in the VM (the quick preset, or --vm-modes=ipvs): the other modes ran on the host only, so IPVS has no like-for-like peer in this run except its own direct path. The full preset runs every mode in the VM as well.")
		}
	}
	if where == WhereVM {
		n = append(n, "This whole run was inside the VM.")
	}
	return n
}

// runInVM re-runs this binary's bench for modes inside the VM and returns
// the report it wrote.
func runInVM(ctx context.Context, o Options, modes []string) (*Report, error) {
	if err := vm.EnsureImage(ctx, nil); err != nil {
		return nil, fmt.Errorf("building the VM image: %w", err)
	}
	dir, err := os.MkdirTemp("", "svcproxy-bench-vm-")
	if err != nil {
		return nil, fmt.Errorf("creating the VM exchange directory: %w", err)
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "vm.json")
	args := []string{o.Binary, "bench",
		"--modes=" + strings.Join(modes, ","), "--peers=",
		"--sizes=" + joinInts(o.Sizes), "--reps=" + strconv.Itoa(o.Reps), "--changes=" + strconv.Itoa(o.Changes),
		"--requests=" + strconv.Itoa(o.VMRequests), "--stream-bytes=" + strconv.FormatInt(o.VMStreamBytes, 10),
		"--inner-json=" + out,
	}
	if o.SkipDataPlane {
		args = append(args, "--control-plane-only")
	}
	prefixed := &linePrefixer{w: o.Out, prefix: "    vm| "}
	err = vm.Run(ctx, vm.Options{Stdout: prefixed, Stderr: prefixed, Writable: []string{dir}, Timeout: 60 * time.Minute, MemoryMiB: 3072}, args...)
	if err != nil {
		return nil, fmt.Errorf("bench in the VM: %w", err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("reading the VM's results: %w", err)
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("decoding the VM's results: %w", err)
	}
	return &r, nil
}

// linePrefixer prefixes every line written through it.
type linePrefixer struct {
	w      io.Writer
	prefix string
	mid    bool
}

func (l *linePrefixer) Write(p []byte) (int, error) {
	for _, line := range strings.SplitAfter(string(p), "\n") {
		if line == "" {
			continue
		}
		if !l.mid {
			if _, err := io.WriteString(l.w, l.prefix); err != nil {
				return 0, err
			}
		}
		if _, err := io.WriteString(l.w, line); err != nil {
			return 0, err
		}
		l.mid = !strings.HasSuffix(line, "\n")
	}
	return len(p), nil
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// collectEnv describes the machine, kernel and versions.
func collectEnv() Env {
	e := Env{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	e.Host, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		e.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				e.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.Atoi(strings.Fields(rest)[0])
				e.MemoryMB = kb / 1024
			}
		}
	}
	if out, err := exec.Command("iptables", "--version").Output(); err == nil {
		e.IPTables = strings.TrimSpace(string(out))
	}
	e.Svcproxy = "dev"
	if out, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		e.Svcproxy = "git " + strings.TrimSpace(string(out))
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				e.Svcproxy = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					e.Svcproxy += " (modified tree)"
				}
			}
		}
	}
	return e
}

// writeJSON writes v as indented JSON to path.
func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding %s: %w", path, err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	klog.V(1).InfoS("Wrote", "path", path)
	return nil
}

// RedirectLogs sends klog's output (the in-process proxiers log every
// socket and sync) away from the terminal: to a file in the temporary
// directory, whose path it returns, when toFile is set; otherwise only
// errors reach stderr.
func RedirectLogs(toFile bool) (string, error) {
	klog.LogToStderr(false)
	if !toFile {
		klog.SetOutput(io.Discard)
		return "", nil
	}
	f, err := os.CreateTemp("", "svcproxy-bench-*.log")
	if err != nil {
		return "", fmt.Errorf("creating the bench log file: %w", err)
	}
	klog.SetOutput(f)
	return f.Name(), nil
}
