package userspace

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// stateFile is what the running proxy writes after every successful sync,
// so that explain (another process) can name the service and endpoints
// behind a proxy port. It is informational: the kernel rules and the
// sockets are the truth.
type stateFile struct {
	PID     int           `json:"pid"`
	Synced  time.Time     `json:"synced"`
	Portals []portalState `json:"portals"`
}

// portalState describes one proxy socket.
type portalState struct {
	Service   string `json:"service"`
	Protocol  string `json:"protocol"`
	Traffic   string `json:"traffic"`
	ProxyPort int    `json:"proxyPort"`
	// Captures lists the destinations redirected to the socket.
	Captures      []string `json:"captures"`
	Endpoints     []string `json:"endpoints"`
	StickyTimeout string   `json:"stickyTimeout,omitempty"`
}

// statePath returns the state file of this network namespace:
// <stateDir>/userspace-<netns inode>.json. The inode keeps proxies in
// different namespaces (lab nodes share /run) apart.
func (p *Proxier) statePath() (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return "", fmt.Errorf("network namespace inode: %w", err)
	}
	return filepath.Join(p.stateDir, fmt.Sprintf("userspace-%d.json", st.Ino)), nil
}

// writeState writes the state file atomically (temporary file, rename).
func (p *Proxier) writeState(sets []*portalSet, np nodePorts) error {
	path, err := p.statePath()
	if err != nil {
		return err
	}
	st := stateFile{PID: os.Getpid(), Synced: time.Now().UTC()}
	for _, s := range sets {
		cl, ext := captures(s.sp, np)
		for _, e := range s.portals() {
			ps := portalState{
				Service:   s.sp.Name.String(),
				Protocol:  string(s.sp.Name.Protocol),
				Traffic:   e.traffic,
				ProxyPort: e.socket.Port(),
			}
			var caps []capture
			switch e.traffic {
			case "cluster":
				caps = cl
			case "external":
				caps = ext
			default:
				caps = append(append(caps, cl...), ext...)
			}
			for _, c := range caps {
				ps.Captures = append(ps.Captures, c.kind+" "+c.String())
			}
			for _, ep := range e.endpoints {
				ps.Endpoints = append(ps.Endpoints, ep.String())
			}
			if s.sp.StickyTimeout > 0 {
				ps.StickyTimeout = s.sp.StickyTimeout.String()
			}
			st.Portals = append(st.Portals, ps)
		}
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	if err := os.MkdirAll(p.stateDir, 0o755); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	tmp, err := os.CreateTemp(p.stateDir, ".userspace-*.json")
	if err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("write state file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("write state file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("write state file: %w", err)
	}
	if !p.swept {
		p.swept = true
		sweepStaleStates(p.stateDir, path)
	}
	return nil
}

// sweepStaleStates removes the state files of proxies that are gone (their
// pid no longer exists), e.g. of lab namespaces that were deleted with the
// proxy still in them. It keeps keep.
func sweepStaleStates(dir, keep string) {
	paths, _ := filepath.Glob(filepath.Join(dir, "userspace-*.json"))
	for _, path := range paths {
		if path == keep {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		var st stateFile
		if json.Unmarshal(data, &st) != nil || st.PID <= 0 {
			continue
		}
		if err := syscall.Kill(st.PID, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.Remove(path)
		}
	}
}

// readState reads this namespace's state file. A missing file is not an
// error: it returns nil.
func (p *Proxier) readState() (*stateFile, string, error) {
	path, err := p.statePath()
	if err != nil {
		return nil, "", err
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, path, nil
	}
	if err != nil {
		return nil, path, fmt.Errorf("read state file: %w", err)
	}
	var st stateFile
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, path, fmt.Errorf("parse state file %s: %w", path, err)
	}
	return &st, path, nil
}

// removeIfExists removes path; a missing file is fine.
func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}
