// Package vm runs commands in a throwaway QEMU guest whose kernel has IPVS.
//
// The development and CI kernel has no IPVS, so svcproxy's IPVS mode is
// exercised in a VM: Debian's stock kernel under QEMU (TCG, never KVM), with
// the host's root file system mounted read-only under a RAM overlay. The work
// is done by two scripts next to this file (build-image.sh makes the kernel
// and initramfs, run-in-vm.sh boots them and runs one command); this package
// finds and drives them from Go, for tests and for `svcproxy lab` and
// `bench`, which re-run themselves inside the VM. See README.md.
package vm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

const (
	// EnvInVM is set to "1" in the environment of every command the runner
	// starts inside the VM.
	EnvInVM = "SVCPROXY_IN_VM"
	// EnvDir names the image cache dir, for the scripts and for ImageDir.
	EnvDir = "SVCPROXY_VM_DIR"
	// EnvRunner, when set, is the path of run-in-vm.sh that RunnerPath returns,
	// for binaries started outside the source tree.
	EnvRunner = "SVCPROXY_VM_RUNNER"
	// DefaultDir is the image cache dir when EnvDir is unset. It is outside
	// /tmp so that it survives reboots and CI runs on the same machine.
	DefaultDir = "/var/cache/svcproxy-vm"

	// ExitTimeout is the runner's exit status when the VM hit its time cap.
	ExitTimeout = 124
	// ExitVMFailure is the runner's exit status when the VM could not run
	// the command or stopped without reporting the command's status.
	ExitVMFailure = 125

	modulePath = "github.com/svcproxy/svcproxy"
	runnerRel  = "e2e/vm/run-in-vm.sh"
	builderRel = "e2e/vm/build-image.sh"
)

// Options tunes one Run. The zero value runs in the current directory with
// the runner's defaults and discards the output.
type Options struct {
	// Stdout receives the command's stdout and stderr, merged (the VM has a
	// single output channel). Nil discards them.
	Stdout io.Writer
	// Stderr receives the runner's own messages: timing, and the console
	// tail when the VM fails. Nil discards them.
	Stderr io.Writer
	// Env holds extra "KEY=VALUE" entries for the command.
	Env []string
	// Writable lists host directories shared writable, at the same path
	// inside the VM. Everything else the command writes stays in VM memory.
	Writable []string
	// Dir is the directory the command runs in (it must be visible inside:
	// not under /run). Empty means the current directory.
	Dir string
	// Timeout caps the VM's wall-clock time, rounded up to whole seconds.
	// Zero means the runner's default (900 s).
	Timeout time.Duration
	// MemoryMiB is the guest memory. Zero means the runner's default (2048).
	MemoryMiB int
	// Runner is the path of run-in-vm.sh. Empty means RunnerPath().
	Runner string
}

// InVM reports whether this process runs inside the IPVS VM.
func InVM() bool {
	return os.Getenv(EnvInVM) == "1"
}

// HostHasIPVS reports whether the running kernel offers IPVS: either it is
// loaded (/proc/net/ip_vs exists) or `modprobe -n ip_vs` says it could be.
// Inside the VM it is true; on the development machine it is false.
func HostHasIPVS() bool {
	return hasIPVS("/proc/net/ip_vs", func() bool {
		return exec.Command("modprobe", "-n", "-q", "ip_vs").Run() == nil
	})
}

func hasIPVS(procFile string, canLoad func() bool) bool {
	if _, err := os.Stat(procFile); err == nil {
		return true
	}
	return canLoad()
}

// ImageDir returns the directory that holds the VM's kernel and initramfs.
func ImageDir() string {
	if d := os.Getenv(EnvDir); d != "" {
		return d
	}
	return DefaultDir
}

// RunnerPath returns the absolute path of run-in-vm.sh: the value of
// EnvRunner if set, else the script under the root of the svcproxy module
// found by walking up from the working directory.
func RunnerPath() (string, error) {
	if p := os.Getenv(EnvRunner); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", fmt.Errorf("%s=%q: %w", EnvRunner, p, err)
		}
		return abs, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding the VM runner: %w", err)
	}
	root, err := moduleRoot(wd)
	if err != nil {
		return "", fmt.Errorf("finding the VM runner: %w", err)
	}
	p := filepath.Join(root, runnerRel)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("finding the VM runner: %w", err)
	}
	return p, nil
}

// moduleRoot walks up from dir to the directory whose go.mod declares the
// svcproxy module (skipping nested modules such as test-tool modules).
func moduleRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("absolute path of %q: %w", dir, err)
	}
	for {
		if declaresModule(filepath.Join(dir, "go.mod"), modulePath) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of module %s above the working directory", modulePath)
		}
		dir = parent
	}
}

func declaresModule(goMod, module string) bool {
	f, err := os.Open(goMod)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "module" {
			return strings.Trim(fields[1], `"`) == module
		}
	}
	return false
}

// EnsureImage runs build-image.sh (next to the runner), which installs the
// host packages the VM needs and builds the kernel and initramfs into
// ImageDir() unless they are current. A warm call takes a fraction of a
// second; a cold one tens of seconds. Its log goes to out (nil discards it).
func EnsureImage(ctx context.Context, out io.Writer) error {
	runner, err := RunnerPath()
	if err != nil {
		return err
	}
	builder := filepath.Join(filepath.Dir(runner), filepath.Base(builderRel))
	cmd := exec.CommandContext(ctx, builder)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building the VM image with %s: %w", builder, err)
	}
	return nil
}

// Run runs args (a program and its arguments, resolved inside the VM
// relative to opts.Dir) in a fresh VM and waits for it. The VM boots in
// about 3.5 s on the development machine. The error is nil when the command
// exits 0; otherwise ExitCode(err) tells its status (ExitTimeout and
// ExitVMFailure mean the VM itself failed). Cancelling ctx stops the VM.
// Run refuses to nest: inside the VM it returns an error at once.
func Run(ctx context.Context, opts Options, args ...string) error {
	if len(args) == 0 {
		return errors.New("vm.Run: no command")
	}
	if InVM() {
		return fmt.Errorf("vm.Run %s: already inside the VM (%s=1)", args[0], EnvInVM)
	}
	runner := opts.Runner
	if runner == "" {
		var err error
		if runner, err = RunnerPath(); err != nil {
			return err
		}
	}
	cmd := exec.CommandContext(ctx, runner, runnerArgs(opts, args)...)
	cmd.Dir = opts.Dir
	cmd.Stdout, cmd.Stderr = opts.Stdout, opts.Stderr
	// SIGTERM lets the runner stop QEMU and clean up; WaitDelay bounds it.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 15 * time.Second
	klog.V(2).InfoS("Running a command in the IPVS VM", "runner", runner, "command", args, "dir", opts.Dir)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("running %s in the VM: %w", args[0], err)
	}
	return nil
}

func runnerArgs(opts Options, args []string) []string {
	var a []string
	if opts.Timeout > 0 {
		secs := int64((opts.Timeout + time.Second - 1) / time.Second)
		a = append(a, "-t", strconv.FormatInt(secs, 10))
	}
	if opts.MemoryMiB > 0 {
		a = append(a, "-m", strconv.Itoa(opts.MemoryMiB))
	}
	for _, w := range opts.Writable {
		a = append(a, "-w", w)
	}
	for _, e := range opts.Env {
		a = append(a, "-e", e)
	}
	a = append(a, "--")
	return append(a, args...)
}

// ExitCode returns the exit status carried by an error from Run: 0 for nil,
// the command's (or the runner's) status, or -1 when the runner did not run
// or was killed by a signal.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}
