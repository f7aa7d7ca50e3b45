// Package traffic sends requests to whoami servers (package whoami) through
// a service and counts which pod answered each one.
//
// Every request uses a new connection (a new TCP connection or a new UDP
// socket, so a new source port and a new conntrack entry), so each one goes
// through the proxy's backend choice again. The dial function decides where
// the client runs: topology.Host.Dial and Host.DialFrom open the socket
// inside a host's network namespace.
package traffic

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"
)

// DialFunc opens a connection, like net.Dialer.DialContext.
// topology.Host.Dial has this signature.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Result is what a run of requests saw.
type Result struct {
	// Counts is the number of answers per Hostname.
	Counts map[string]int
	// Errors is the number of requests without a valid answer.
	Errors int
	// FirstError is the error of the first failed request, nil if none.
	FirstError error
	// Latencies are the durations of the successful requests, connection
	// set-up included, in the order they were sent.
	Latencies []time.Duration
}

// maxAnswer bounds how much of a whoami answer is read.
const maxAnswer = 1 << 20

// HTTP sends n GET requests to url, each over a new connection made by
// dial, each bounded by timeout, one after the other. It stops early when
// ctx is done and counts the requests not sent as errors.
func HTTP(ctx context.Context, dial DialFunc, url string, n int, timeout time.Duration) Result {
	client := newClient(dial)
	defer client.CloseIdleConnections()
	return run(ctx, n, timeout, func(ctx context.Context) (string, error) {
		body, err := get(ctx, client, url)
		if err != nil {
			return "", err
		}
		return Hostname(body)
	})
}

// Fetch sends one GET request to url over a new connection made by dial and
// returns the whole answer, as `curl -s` prints it.
func Fetch(ctx context.Context, dial DialFunc, url string, timeout time.Duration) (string, error) {
	client := newClient(dial)
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	body, err := get(ctx, client, url)
	return string(body), err
}

// newClient returns an HTTP client that dials every request anew.
func newClient(dial DialFunc) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true, Proxy: nil}}
}

// get fetches url and returns its body, or an error for a status other
// than 200.
func get(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("building request for %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return nil, fmt.Errorf("reading answer from %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %s", url, resp.Status)
	}
	return body, nil
}

// UDP sends n datagrams to addr (IP:port), each from a new socket made by
// dial, and waits up to timeout for each answer. It stops early when ctx is
// done and counts the datagrams not sent as errors.
func UDP(ctx context.Context, dial DialFunc, addr string, n int, timeout time.Duration) Result {
	return run(ctx, n, timeout, func(ctx context.Context) (string, error) {
		conn, err := dial(ctx, "udp", addr)
		if err != nil {
			return "", err
		}
		defer conn.Close()
		if deadline, ok := ctx.Deadline(); ok {
			if err := conn.SetDeadline(deadline); err != nil {
				return "", fmt.Errorf("setting deadline: %w", err)
			}
		}
		if _, err := conn.Write([]byte("whoami\n")); err != nil {
			return "", fmt.Errorf("sending to %s: %w", addr, err)
		}
		buf := make([]byte, 64*1024)
		k, err := conn.Read(buf)
		if err != nil {
			return "", fmt.Errorf("waiting for an answer from %s: %w", addr, err)
		}
		return Hostname(buf[:k])
	})
}

// run calls one n times and gathers the results.
func run(ctx context.Context, n int, timeout time.Duration, one func(context.Context) (string, error)) Result {
	r := Result{Counts: map[string]int{}}
	fail := func(err error) {
		r.Errors++
		if r.FirstError == nil {
			r.FirstError = err
		}
	}
	for i := range n {
		if err := ctx.Err(); err != nil {
			for range n - i {
				fail(fmt.Errorf("not sent: %w", err))
			}
			break
		}
		reqCtx, cancel := context.WithTimeout(ctx, timeout)
		start := time.Now()
		host, err := one(reqCtx)
		elapsed := time.Since(start)
		cancel()
		if err != nil {
			fail(fmt.Errorf("request %d: %w", i+1, err))
			continue
		}
		r.Counts[host]++
		r.Latencies = append(r.Latencies, elapsed)
	}
	return r
}

// Hostname returns the value of the first "Hostname:" line of a whoami
// answer.
// Hostname returns the value of a whoami answer's "Hostname:" line.
func Hostname(answer []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(answer))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Hostname:"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("no Hostname line in the answer %q", truncate(answer, 80))
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// Answered returns the number of requests that got an answer.
func (r Result) Answered() int {
	total := 0
	for _, c := range r.Counts {
		total += c
	}
	return total
}

// Percentile returns the p-th percentile (0 < p <= 100) of the latencies
// (nearest rank), or 0 without latencies.
func (r Result) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	sorted := slices.Clone(r.Latencies)
	slices.Sort(sorted)
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Fair checks that n requests all got an answer from one of pods and that
// the spread looks like a uniform random (or round-robin) choice: every pod's
// count must be within max(6 standard deviations of a binomial draw, 40% of
// its expected share) of n/len(pods). For 1000 requests over 3 pods that
// means at least 200 each; a fair random choice fails with probability
// below 1e-8, while small samples (10 requests) are hardly constrained. The
// error names the first pod whose share is off.
func (r Result) Fair(pods []string, n int) error {
	if len(pods) == 0 {
		return errors.New("fairness check: no pods given")
	}
	if r.Errors > 0 {
		return fmt.Errorf("fairness check: %d of %d requests failed, first: %w", r.Errors, n, r.FirstError)
	}
	if got := r.Answered(); got != n {
		return fmt.Errorf("fairness check: %d answers for %d requests", got, n)
	}
	want := map[string]bool{}
	for _, p := range pods {
		want[p] = true
	}
	for _, name := range sortedKeys(r.Counts) {
		if !want[name] {
			return fmt.Errorf("fairness check: %d answers from %q, which is not one of %v", r.Counts[name], name, pods)
		}
	}
	p := 1 / float64(len(pods))
	expected := float64(n) * p
	sigma := math.Sqrt(float64(n) * p * (1 - p))
	tolerance := math.Max(6*sigma, 0.4*expected)
	for _, pod := range pods {
		got := float64(r.Counts[pod])
		if math.Abs(got-expected) > tolerance {
			return fmt.Errorf("fairness check: pod %s got %d of %d requests (%.1f%%), want %.0f±%.0f",
				pod, r.Counts[pod], n, 100*got/float64(n), expected, tolerance)
		}
	}
	return nil
}

// barWidth is the width of a 100% bar in Table.
const barWidth = 40

// Table writes the spread as a small table: one row per pod (the given pods
// first, in order, then any other Hostname seen), with count, percent of all
// requests and a bar, then a row for errors when there were some.
func (r Result) Table(w io.Writer, pods []string) error {
	rows := slices.Clone(pods)
	for _, name := range sortedKeys(r.Counts) {
		if !slices.Contains(rows, name) {
			rows = append(rows, name)
		}
	}
	total := r.Answered() + r.Errors
	width := len("POD")
	for _, name := range rows {
		width = max(width, len(name))
	}
	if r.Errors > 0 {
		width = max(width, len("(errors)"))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-*s %6s %8s\n", width, "POD", "COUNT", "PERCENT")
	line := func(name string, count int, mark string) {
		pct := 0.0
		if total > 0 {
			pct = 100 * float64(count) / float64(total)
		}
		bar := strings.Repeat(mark, int(math.Round(pct/100*barWidth)))
		fmt.Fprintf(&b, "%-*s %6d %7.1f%% %s\n", width, name, count, pct, bar)
	}
	for _, name := range rows {
		line(name, r.Counts[name], "#")
	}
	if r.Errors > 0 {
		line("(errors)", r.Errors, "x")
		fmt.Fprintf(&b, "first error: %v\n", r.FirstError)
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("writing spread table: %w", err)
	}
	return nil
}

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
