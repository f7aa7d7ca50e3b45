// Package isolate makes a test binary or the lab run inside a throwaway
// network namespace of its own.
//
// Every e2e test binary and `svcproxy lab` call MustIsolate (or
// EnsureIsolated) first. The first time the process runs, the helper starts
// the same binary again with the same arguments in a fresh network namespace
// (clone with CLONE_NEWNET), forwards SIGINT and SIGTERM to it, waits, and
// exits with the child's status. The child sees SVCPROXY_ISOLATED=1, brings
// its loopback up and carries on. So whatever the process does to the network
// it finds itself in — routes, netfilter rules, sysctls, a forgotten
// `ip netns exec` that falls back to the current namespace — happens in a
// namespace that disappears when it exits, never in the host's.
//
// Named namespaces the child creates (see package topology) live in
// /run/netns of the shared mount namespace, so users can still reach them with
// `ip netns exec NAME`.
package isolate

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// EnvVar is the environment variable that marks a process as already running
// in its own network namespace. Its value is "1" in the re-executed child.
const EnvVar = "SVCPROXY_ISOLATED"

// Isolated reports whether the current process is the re-executed child that
// runs in a network namespace of its own.
func Isolated() bool {
	return os.Getenv(EnvVar) == "1"
}

// EnsureIsolated makes sure the process runs in a throwaway network
// namespace.
//
// In the isolated child (EnvVar is "1") it brings the loopback interface up
// and returns nil. Otherwise it re-executes the current binary with os.Args in
// a new network namespace, with stdin, stdout and stderr wired through and
// SIGINT/SIGTERM forwarded (SIGINT only when it cannot have come from the
// terminal, which signals the child directly), and calls os.Exit with the child's exit status
// (128+signal if the child was killed by a signal): it then never returns. It
// returns an error only when the child could not be started (for example
// without CAP_SYS_ADMIN) or the loopback could not be brought up.
func EnsureIsolated() error {
	if Isolated() {
		return loopbackUp()
	}
	code, err := runIsolated()
	if err != nil {
		return err
	}
	os.Exit(code)
	return nil // not reached
}

// MustIsolate is EnsureIsolated for the first line of TestMain or a command's
// main: on error it prints the error to stderr and exits with status 1.
//
//	func TestMain(m *testing.M) {
//		isolate.MustIsolate()
//		os.Exit(m.Run())
//	}
func MustIsolate() {
	if err := EnsureIsolated(); err != nil {
		fmt.Fprintf(os.Stderr, "isolate: %v\n", err)
		os.Exit(1)
	}
}

// runIsolated starts the current binary in a new network namespace and
// returns its exit code.
func runIsolated() (int, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("finding the current executable: %w", err)
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(os.Environ(), EnvVar+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}

	// Subscribe before the child starts so no signal is lost in between.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("re-executing %s in a new network namespace: %w", exe, err)
	}
	terminalDelivers := inForegroundGroup()
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				if s == syscall.SIGINT && terminalDelivers {
					// A Ctrl-C reaches the child from the terminal already;
					// forwarding it too would deliver it twice.
					continue
				}
				// The child may already be gone; nothing to do then.
				_ = cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	if err == nil {
		return 0, nil
	}
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) {
		return 0, fmt.Errorf("waiting for the isolated child: %w", err)
	}
	if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), nil
	}
	return exitErr.ExitCode(), nil
}

// inForegroundGroup reports whether the process belongs to the foreground
// process group of the terminal on stdin, so that the terminal sends SIGINT
// to the child (same group) as well.
func inForegroundGroup() bool {
	fg, err := unix.IoctlGetInt(int(os.Stdin.Fd()), unix.TIOCGPGRP)
	return err == nil && fg == unix.Getpgrp()
}

// loopbackUp sets "lo" up in the current network namespace.
func loopbackUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding the loopback interface: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("setting the loopback interface up: %w", err)
	}
	return nil
}
