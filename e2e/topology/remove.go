package topology

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// nsID identifies a network namespace by the device and inode of its nsfs
// file.
type nsID struct {
	dev, ino uint64
}

// statNS returns the namespace identity of path (a /run/netns entry or a
// /proc/PID/ns/net link).
func statNS(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, err
	}
	return nsID{dev: st.Dev, ino: st.Ino}, nil
}

// namespacesWithPrefix lists the names in /run/netns that start with
// prefix and a dash, sorted.
func namespacesWithPrefix(prefix string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", netnsDir, err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// ListPrefixes returns the distinct prefixes of namespaces in /run/netns
// that look like ones this package made with a random prefix ("svcpXXXX-").
func ListPrefixes() ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", netnsDir, err)
	}
	seen := map[string]bool{}
	var prefixes []string
	for _, e := range entries {
		prefix, _, ok := strings.Cut(e.Name(), "-")
		if !ok || len(prefix) != 8 || !strings.HasPrefix(prefix, "svcp") || seen[prefix] {
			continue
		}
		seen[prefix] = true
		prefixes = append(prefixes, prefix)
	}
	sort.Strings(prefixes)
	return prefixes, nil
}

// RemoveByPrefix deletes the namespaces "<prefix>-*" in /run/netns, after
// killing every process whose network namespace is one of them (SIGTERM,
// then SIGKILL after StopTimeout; the calling process itself is never
// touched). Processes in other namespaces are left alone: they are matched
// by the inode of /proc/PID/ns/net. It is used by Cluster.Close and by
// `svcproxy lab --down` for a cluster left by an earlier run.
func RemoveByPrefix(prefix string) error {
	if prefix == "" || strings.ContainsAny(prefix, "/") {
		return fmt.Errorf("removing namespaces: refusing prefix %q", prefix)
	}
	names, err := namespacesWithPrefix(prefix)
	if err != nil {
		return err
	}
	if len(names) == 0 {
		return nil
	}
	ours := map[nsID]string{}
	for _, name := range names {
		id, err := statNS(filepath.Join(netnsDir, name))
		if err != nil {
			continue // a file left without its mount: nothing runs in it
		}
		ours[id] = name
	}
	var errs []error
	if err := killProcessesIn(ours); err != nil {
		errs = append(errs, err)
	}
	for _, name := range names {
		if err := deleteNamespace(name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("removing namespaces with prefix %s: %w", prefix, err)
	}
	klog.V(2).InfoS("Removed namespaces", "prefix", prefix, "namespaces", names)
	return nil
}

// deleteNamespace unmounts and removes /run/netns/name.
func deleteNamespace(name string) error {
	path := filepath.Join(netnsDir, name)
	// EINVAL: not a mount point (a leftover file); the file is removed anyway.
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", path, err)
	}
	return nil
}

// processesIn returns the pids (not our own) whose network namespace is in
// ours.
func processesIn(ours map[nsID]string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		id, err := statNS(filepath.Join("/proc", e.Name(), "ns", "net"))
		if err != nil {
			continue // gone, or a zombie
		}
		if _, ok := ours[id]; ok {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killProcessesIn stops every process running in one of ours.
func killProcessesIn(ours map[nsID]string) error {
	pids := processesIn(ours)
	if len(pids) == 0 {
		return nil
	}
	for _, pid := range pids {
		klog.V(2).InfoS("Stopping leftover process", "pid", pid)
		_ = syscall.Kill(pid, syscall.SIGTERM) // it may be gone already
	}
	deadline := time.Now().Add(StopTimeout)
	for time.Now().Before(deadline) {
		if len(processesIn(ours)) == 0 {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, pid := range processesIn(ours) {
		klog.InfoS("Killing leftover process", "pid", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline = time.Now().Add(StopTimeout)
	for time.Now().Before(deadline) {
		left := processesIn(ours)
		if len(left) == 0 {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	if left := processesIn(ours); len(left) > 0 {
		return fmt.Errorf("processes %v still run in the namespaces", left)
	}
	return nil
}
