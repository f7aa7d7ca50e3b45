package topology

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
)

// netnsDir is where named network namespaces are bind-mounted, as with
// `ip netns add`.
const netnsDir = "/run/netns"

// onThread runs fn on a fresh goroutine locked to its OS thread. If target is
// a valid handle the thread is first switched into that namespace. When fn
// returns, the thread goes back to its original namespace and is unlocked;
// if that fails, it stays locked and the runtime discards it when the
// goroutine exits, so no goroutine ever runs in a namespace by surprise.
// A panic in fn is re-raised in the caller's goroutine.
func onThread(target netns.NsHandle, fn func() error) error {
	type result struct {
		err      error
		panicked bool
		value    any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			done <- result{err: fmt.Errorf("getting the current network namespace: %w", err)}
			return
		}
		defer orig.Close()
		if target.IsOpen() {
			if err := netns.Set(target); err != nil {
				done <- result{err: fmt.Errorf("entering network namespace: %w", err)}
				return
			}
		}
		var res result
		func() {
			defer func() {
				if v := recover(); v != nil {
					res = result{panicked: true, value: v}
				}
			}()
			res.err = fn()
		}()
		if cur, err := netns.Get(); err == nil {
			if cur.Equal(orig) || netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
			cur.Close()
		}
		done <- res
	}()
	res := <-done
	if res.panicked {
		panic(res.value)
	}
	return res.err
}

// openNamespace opens the named namespace name (a full name, prefix included).
func openNamespace(name string) (netns.NsHandle, error) {
	h, err := netns.GetFromPath(filepath.Join(netnsDir, name))
	if err != nil {
		return netns.None(), fmt.Errorf("opening network namespace %s: %w", name, err)
	}
	return h, nil
}

// createNamespace creates the named namespace name and returns an open
// handle to it. The calling goroutine's namespace is not changed.
func createNamespace(name string) (netns.NsHandle, error) {
	h := netns.None()
	err := onThread(netns.None(), func() error {
		var err error
		h, err = netns.NewNamed(name)
		return err
	})
	if err != nil {
		// NewNamed leaves its mount point file behind when the mount fails.
		_ = os.Remove(filepath.Join(netnsDir, name))
		return netns.None(), fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	return h, nil
}

// sysctl is one /proc/sys setting; optional ones may be missing (for example
// net.bridge.* without br_netfilter).
type sysctl struct {
	key, value string
	optional   bool
}

// writeSysctls writes settings inside the namespace ns.
func writeSysctls(ns netns.NsHandle, settings []sysctl) error {
	return onThread(ns, func() error {
		for _, s := range settings {
			path := "/proc/sys/" + strings.ReplaceAll(s.key, ".", "/")
			err := os.WriteFile(path, []byte(s.value), 0o644)
			if err != nil && s.optional && errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("setting sysctl %s=%s: %w", s.key, s.value, err)
			}
		}
		return nil
	})
}

// readSysctl reads one setting inside the namespace ns.
func readSysctl(ns netns.NsHandle, key string) (string, error) {
	var v string
	err := onThread(ns, func() error {
		b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
		if err != nil {
			return fmt.Errorf("reading sysctl %s: %w", key, err)
		}
		v = strings.TrimSpace(string(b))
		return nil
	})
	return v, err
}
