package topology

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"k8s.io/klog/v2"
)

// StopTimeout bounds how long Proc.Stop waits after SIGTERM before it sends
// SIGKILL.
const StopTimeout = 5 * time.Second

// Host is one network namespace of a cluster: a node, a pod, the external
// client or the fabric.
type Host struct {
	// Name is the short name from the Spec ("node1", "webpod-1", "external").
	Name string
	// NS is the network namespace name, "<prefix>-<Name>", usable with
	// `ip netns exec`.
	NS string
	// IP is the host's main address (invalid for the fabric).
	IP netip.Addr

	cluster *Cluster
}

// Node is a cluster node: its own namespace, so its own netfilter and IPVS
// state.
type Node struct {
	Host
	// Index is the node number from 1; the node's address is NodeIP(Index).
	Index int
	// Pods are the node's pods in Spec order.
	Pods []*Pod
}

// Pod is a pod namespace routed to its node over a point-to-point veth.
type Pod struct {
	Host
	// Node is the node the pod runs on.
	Node *Node
	// Index is the pod number on its node from 0; the pod's address is
	// PodIP(Node.Index, Index).
	Index int
	// HostIfName is the node side of the pod's veth, in the node namespace.
	HostIfName string
}

// Do runs fn on an OS thread switched into the host's network namespace and
// returns fn's error. Sockets fn creates stay in that namespace wherever
// they are used later; goroutines fn starts do not run in it.
func (h *Host) Do(fn func() error) error {
	ns, err := openNamespace(h.NS)
	if err != nil {
		return err
	}
	defer ns.Close()
	return onThread(ns, fn)
}

// Dial connects to addr over network ("tcp", "udp", ...) from inside the
// host's namespace. Its signature matches traffic.DialFunc.
func (h *Host) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return h.DialFrom(netip.Addr{})(ctx, network, addr)
}

// DialFrom returns a dial function like Dial whose sockets are bound to the
// source address src first (no binding if src is invalid). addr must be a
// literal IP:port, so the connection attempt runs on the switched thread.
func (h *Host) DialFrom(src netip.Addr) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		if src.IsValid() {
			switch {
			case strings.HasPrefix(network, "tcp"):
				d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
			case strings.HasPrefix(network, "udp"):
				d.LocalAddr = &net.UDPAddr{IP: src.AsSlice()}
			default:
				return nil, fmt.Errorf("binding a %s socket to %s: unsupported network", network, src)
			}
		}
		var conn net.Conn
		err := h.Do(func() error {
			var err error
			conn, err = d.DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
}

// Proc is a process a Host started; the cluster stops it on Close.
type Proc struct {
	// Name is the command name as given to Start.
	Name string
	// Args are the command arguments as given to Start.
	Args []string
	// Pid is the process id (and process group id) of the command.
	Pid int
	// LogPath is the file that receives the command's stdout and stderr.
	LogPath string

	done chan struct{}
	err  error
}

// Wait waits for the process to exit and returns its exit error, like
// exec.Cmd.Wait. It may be called any number of times.
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM to the process group, waits up to StopTimeout, then
// sends SIGKILL and waits for the exit. It returns nil once the process is
// gone, whatever its exit status; it is safe to call more than once.
func (p *Proc) Stop() error {
	if p.Exited() {
		return nil
	}
	if err := syscall.Kill(-p.Pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("sending SIGTERM to %s (pid %d): %w", p.Name, p.Pid, err)
	}
	timer := time.NewTimer(StopTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
	}
	klog.InfoS("Process ignored SIGTERM, killing it", "name", p.Name, "pid", p.Pid)
	if err := syscall.Kill(-p.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("sending SIGKILL to %s (pid %d): %w", p.Name, p.Pid, err)
	}
	<-p.done
	return nil
}

// Start runs the command name with args inside the host's namespace, in its
// own process group, with stdout and stderr appended to a log file in the
// cluster's log directory (Proc.LogPath). The child is forked from a thread
// set into the namespace, the in-process equivalent of
// `ip netns exec NS name args...`. The cluster stops the process on Close.
func (h *Host) Start(name string, args ...string) (*Proc, error) {
	c := h.cluster
	logPath := c.nextLogPath(h.Name, filepath.Base(name))
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening log file for %s in %s: %w", name, h.NS, err)
	}
	defer logFile.Close() // the child holds its own copy
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := h.Do(cmd.Start); err != nil {
		return nil, fmt.Errorf("starting %s in %s: %w", name, h.NS, err)
	}
	p := &Proc{Name: name, Args: args, Pid: cmd.Process.Pid, LogPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := c.track(p); err != nil {
		_ = p.Stop()
		return nil, fmt.Errorf("starting %s in %s: %w", name, h.NS, err)
	}
	klog.V(2).InfoS("Started process", "host", h.Name, "netns", h.NS, "name", name, "args", args, "pid", p.Pid, "log", logPath)
	return p, nil
}

// Run runs a short command (args[0] with args[1:]) inside the host's
// namespace and returns its stdout. On failure the error carries the exit
// status and stderr. ctx cancellation kills the command.
func (h *Host) Run(ctx context.Context, args ...string) ([]byte, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("running a command in %s: no command given", h.NS)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := h.Do(cmd.Start); err != nil {
		return nil, fmt.Errorf("starting %q in %s: %w", strings.Join(args, " "), h.NS, err)
	}
	if err := cmd.Wait(); err != nil {
		return stdout.Bytes(), fmt.Errorf("running %q in %s: %w: %s",
			strings.Join(args, " "), h.NS, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// namespace opens the host's namespace; the caller closes the handle.
func (h *Host) namespace() (netns.NsHandle, error) {
	return openNamespace(h.NS)
}

// Sysctl reads a sysctl (dotted key, e.g. "net.ipv4.ip_forward") inside the
// host's namespace.
func (h *Host) Sysctl(key string) (string, error) {
	ns, err := h.namespace()
	if err != nil {
		return "", err
	}
	defer ns.Close()
	return readSysctl(ns, key)
}
