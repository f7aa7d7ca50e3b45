package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/e2e/manifest"
	"github.com/svcproxy/svcproxy/e2e/topology"
	"github.com/svcproxy/svcproxy/e2e/traffic"
)

// Addresses of the data-plane topology's services (outside the filler's
// range 10.96.0.0–10.96.127.255, inside the nodes' service route).
const (
	webClusterIP = "10.96.250.10"
	webPort      = 9000
	// changeIPBase is the first of the services added to time a change.
	changeIPBase = "10.96.251.1"
)

// webPods are the backends, one per worker node.
var webPods = []string{"web1", "web2", "web3"}

// dataPlane runs svcproxy in mode as a process with the file source on the
// client's node of a four-node topology (client pod on node1, one whoami pod
// on each of node2..node4), loads n filler services plus the web service,
// and measures: the process's first sync, RSS and CPU; requests per second
// with a new connection each, latency percentiles and one stream's
// throughput through the ClusterIP and straight to the pods; and the time
// from writing a new Service to the first answer through it.
func dataPlane(ctx context.Context, o *Options, mode, where string, n int) ([]Record, error) {
	cluster, err := topology.Build(ctx, topology.Spec{Nodes: []topology.NodeSpec{
		{Name: "node1", Pods: []string{"client"}},
		{Name: "node2", Pods: []string{"web1"}},
		{Name: "node3", Pods: []string{"web2"}},
		{Name: "node4", Pods: []string{"web3"}},
	}})
	if err != nil {
		return nil, fmt.Errorf("building the data-plane topology: %w", err)
	}
	defer func() {
		if err := cluster.Close(); err != nil {
			klog.ErrorS(err, "Removing the data-plane topology", "prefix", cluster.Prefix)
		}
	}()
	var podAddrs []string
	for _, pod := range webPods {
		p := cluster.Pod(pod)
		if _, err := p.Start(o.Binary, "whoami", "--name", pod, "--tcp", "80"); err != nil {
			return nil, fmt.Errorf("starting whoami in %s: %w", pod, err)
		}
		podAddrs = append(podAddrs, netip.AddrPortFrom(p.IP, 80).String())
	}
	dir, err := os.MkdirTemp("", "svcproxy-bench-")
	if err != nil {
		return nil, fmt.Errorf("creating the manifest directory: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := writeFiller(filepath.Join(dir, "filler.yaml"), n, o.Endpoints); err != nil {
		return nil, err
	}
	if err := writeWeb(filepath.Join(dir, "web.yaml"), "web", webClusterIP, cluster); err != nil {
		return nil, err
	}

	node1, client := cluster.Node("node1"), cluster.Pod("client")
	start := time.Now()
	proc, err := node1.Start(o.Binary, "--mode="+mode, "--source=file:"+dir, "--hostname-override=node1",
		"--cluster-cidr="+topology.ClusterCIDR, "--min-sync-period="+o.MinSyncPeriod.String())
	if err != nil {
		return nil, fmt.Errorf("starting svcproxy: %w", err)
	}
	defer proc.Stop()
	vip := net.JoinHostPort(webClusterIP, strconv.Itoa(webPort))
	if err := waitSynced(ctx, node1, proc, o.SyncTimeout); err != nil {
		return nil, err
	}
	firstSync := time.Since(start)
	rss, cpu, err := procUsage(proc.Pid)
	if err != nil {
		return nil, err
	}
	if err := waitAnswer(ctx, client, vip, o.SyncTimeout); err != nil {
		return nil, fmt.Errorf("the web service never answered through %s (svcproxy log %s): %w", vip, proc.LogPath, err)
	}

	// Warm-up: connection tracking, ARP/neighbour entries, caches.
	if _, _, err := requests(client, [][]string{{vip}, podAddrs}, o.Requests/10+10); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	samples := map[string][]float64{}
	sides := []struct {
		prefix string
		addrs  []string
	}{{"", []string{vip}}, {DirectPrefix, podAddrs}}
	for rep := range o.Reps {
		// Requests alternate between the ClusterIP and the pods, so both
		// sides see the same moment of a shared, noisy machine.
		lats, failed, err := requests(client, [][]string{sides[0].addrs, sides[1].addrs}, o.Requests)
		if err != nil {
			return nil, fmt.Errorf("requests: %w", err)
		}
		for i, side := range sides {
			lat := lats[i]
			total := 0.0
			for _, l := range lat {
				total += l
			}
			samples[side.prefix+MetricFailed] = append(samples[side.prefix+MetricFailed], float64(failed[i]))
			samples[side.prefix+MetricRPS] = append(samples[side.prefix+MetricRPS], float64(len(lat))/total)
			samples[side.prefix+MetricLatP50] = append(samples[side.prefix+MetricLatP50], 1000*Percentile(lat, 50))
			samples[side.prefix+MetricLatP99] = append(samples[side.prefix+MetricLatP99], 1000*Percentile(lat, 99))
		}
		// Streams alternate which side goes first.
		for j := range sides {
			side := sides[(j+rep)%len(sides)]
			mbps, err := stream(client, side.addrs[0], o.StreamBytes)
			if err != nil {
				return nil, fmt.Errorf("stream from %s: %w", side.addrs[0], err)
			}
			samples[side.prefix+MetricThroughput] = append(samples[side.prefix+MetricThroughput], mbps)
		}
	}
	for k := range o.Reps {
		d, err := changeToTraffic(ctx, dir, k, cluster, client, o.SyncTimeout)
		if err != nil {
			return nil, fmt.Errorf("change to traffic (svcproxy log %s): %w", proc.LogPath, err)
		}
		samples[MetricChangeToTraffic] = append(samples[MetricChangeToTraffic], d.Seconds())
	}
	samples[MetricProcFirstSync] = []float64{firstSync.Seconds()}
	samples[MetricRSS] = []float64{rss}
	samples[MetricCPU] = []float64{cpu}
	if proc.Exited() {
		return nil, fmt.Errorf("svcproxy exited during the measurement: %v (log %s)", proc.Wait(), proc.LogPath)
	}
	var out []Record
	for _, m := range sortedKeys(samples) {
		out = append(out, Record{Impl: ImplSvcproxy, Mode: mode, Where: where, Services: n, Endpoints: o.Endpoints, Metric: m, Stat: Summarize(samples[m])})
	}
	return out, nil
}

// writeFiller writes n ClusterIP services with e endpoints each that carry
// no traffic: the load the proxy holds while the web service is measured.
func writeFiller(path string, n, e int) error {
	var b strings.Builder
	for i := range n {
		name := fmt.Sprintf("svc%d", i)
		b.WriteString(manifest.Service{Name: name, ClusterIP: fmt.Sprintf("10.96.%d.%d", i>>8, i&255),
			Ports: []manifest.Port{{Name: "http", Port: 80, Target: "8080"}}}.YAML())
		sl := manifest.Slice{Name: name + "-1", Service: name, Ports: []manifest.SlicePort{{Name: "http", Port: 8080}}}
		for j := range e {
			k := i*e + j
			sl.Endpoints = append(sl.Endpoints, manifest.Endpoint{IP: fmt.Sprintf("10.%d.%d.%d", 128+(k>>16)%64, (k>>8)&255, k&255),
				Node: fmt.Sprintf("node%d", 2+j%3)})
		}
		b.WriteString(sl.YAML())
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("writing the filler services: %w", err)
	}
	return nil
}

// writeWeb writes a service at clusterIP:webPort whose endpoints are the web
// pods, atomically (the file source must never read half a file).
func writeWeb(path, name, clusterIP string, c *topology.Cluster) error {
	var b strings.Builder
	b.WriteString(manifest.Service{Name: name, ClusterIP: clusterIP,
		Ports: []manifest.Port{{Name: "http", Port: webPort, Target: "80"}}}.YAML())
	sl := manifest.Slice{Name: name + "-1", Service: name, Ports: []manifest.SlicePort{{Name: "http", Port: 80}}}
	for _, pod := range webPods {
		p := c.Pod(pod)
		sl.Endpoints = append(sl.Endpoints, manifest.Endpoint{IP: p.IP.String(), Node: p.Node.Name})
	}
	b.WriteString(sl.YAML())
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("writing service %s: %w", name, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing service %s: %w", name, err)
	}
	return nil
}

// waitSynced polls the proxy's metrics on 127.0.0.1:10249 in node until
// its last successful sync timestamp is set.
func waitSynced(ctx context.Context, node *topology.Node, proc *topology.Proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if proc.Exited() {
			return fmt.Errorf("%s exited before its first sync: %v (log %s)", proc.Name, proc.Wait(), proc.LogPath)
		}
		body, err := traffic.Fetch(ctx, node.Dial, "http://127.0.0.1:10249/metrics", 5*time.Second)
		if err == nil && metricValue(body, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not sync within %v (log %s)", proc.Name, timeout, proc.LogPath)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// metricValue returns the value of the first sample of a metric in a
// Prometheus text exposition, or -1.
func metricValue(body, name string) float64 {
	for _, line := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return -1
		}
		return v
	}
	return -1
}

// waitAnswer retries one request to addr from client until it is answered.
func waitAnswer(ctx context.Context, client *topology.Pod, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var err error
		if err = client.Do(func() error { _, err := request(addr, 300*time.Millisecond); return err }); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// changeToTraffic writes service chg<k> with a new ClusterIP and returns the
// time until the client's first request to it is answered.
func changeToTraffic(ctx context.Context, dir string, k int, c *topology.Cluster, client *topology.Pod, timeout time.Duration) (time.Duration, error) {
	base := netip.MustParseAddr(changeIPBase)
	ip := base
	for range k {
		ip = ip.Next()
	}
	name := fmt.Sprintf("chg%d", k)
	start := time.Now()
	if err := writeWeb(filepath.Join(dir, name+".yaml"), name, ip.String(), c); err != nil {
		return 0, err
	}
	if err := waitAnswer(ctx, client, net.JoinHostPort(ip.String(), strconv.Itoa(webPort)), timeout); err != nil {
		return 0, fmt.Errorf("service %s at %s never answered: %w", name, ip, err)
	}
	return time.Since(start), nil
}

// requests sends n HTTP/1.0 GET requests from client to each of sides, a
// new connection each, one after the other, alternating between the sides
// and cycling over each side's addresses. It returns per side the latency
// of each answered request in seconds (connect to the end of the answer)
// and the number of failures; it fails when more than a tenth of a side's
// requests fail. The loop runs on one thread inside the client's
// namespace, so no namespace switch is timed.
func requests(client *topology.Pod, sides [][]string, n int) (lat [][]float64, failed []int, err error) {
	lat = make([][]float64, len(sides))
	failed = make([]int, len(sides))
	firsts := make([]error, len(sides))
	err = client.Do(func() error {
		for i := range n {
			for s, addrs := range sides {
				addr := addrs[i%len(addrs)]
				d, err := request(addr, 5*time.Second)
				if err != nil {
					failed[s]++
					if firsts[s] == nil {
						firsts[s] = fmt.Errorf("request %d to %s: %w", i, addr, err)
					}
					klog.InfoS("Request failed", "addr", addr, "index", i, "err", err)
					continue
				}
				lat[s] = append(lat[s], d.Seconds())
			}
		}
		return nil
	})
	for s := range sides {
		if err == nil && failed[s]*10 > n {
			err = fmt.Errorf("%d of %d requests failed, the first: %w", failed[s], n, firsts[s])
		}
	}
	return lat, failed, err
}

// request sends one GET / over a new connection and reads the answer.
func request(addr string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if err := conn.SetDeadline(start.Add(timeout)); err != nil {
		return 0, fmt.Errorf("setting a deadline: %w", err)
	}
	if _, err := io.WriteString(conn, "GET / HTTP/1.0\r\nHost: bench\r\n\r\n"); err != nil {
		return 0, fmt.Errorf("sending to %s: %w", addr, err)
	}
	br := bufio.NewReader(conn)
	status, err := br.ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("reading the status from %s: %w", addr, err)
	}
	if !strings.Contains(status, " 200 ") {
		return 0, fmt.Errorf("%s answered %q", addr, strings.TrimSpace(status))
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		return 0, fmt.Errorf("reading the answer from %s: %w", addr, err)
	}
	return time.Since(start), nil
}

// stream fetches size bytes of /data from addr over one connection and
// returns the goodput in MB/s (10^6 bytes).
func stream(client *topology.Pod, addr string, size int64) (float64, error) {
	var mbps float64
	err := client.Do(func() error {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		start := time.Now()
		if _, err := fmt.Fprintf(conn, "GET /data?size=%d HTTP/1.0\r\nHost: bench\r\n\r\n", size); err != nil {
			return fmt.Errorf("sending to %s: %w", addr, err)
		}
		got, err := io.Copy(io.Discard, conn)
		if err != nil {
			return fmt.Errorf("reading from %s: %w", addr, err)
		}
		if got < size {
			return fmt.Errorf("%s sent %d bytes, want %d", addr, got, size)
		}
		mbps = float64(got) / 1e6 / time.Since(start).Seconds()
		return nil
	})
	return mbps, err
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat
// (100 on every Linux architecture Go supports).
const clockTicks = 100

// procUsage returns a process's resident set (MB) and CPU time (user +
// system, s) from /proc.
func procUsage(pid int) (rssMB, cpuS float64, err error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("reading the proxy's status: %w", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			kb, _ := strconv.ParseFloat(f[0], 64)
			rssMB = kb / 1024
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("reading the proxy's CPU time: %w", err)
	}
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return 0, 0, errors.New("malformed /proc/PID/stat")
	}
	f := strings.Fields(string(stat)[i+1:])
	// Fields after the command: state(0) ... utime(11) stime(12).
	if len(f) < 13 {
		return 0, 0, errors.New("short /proc/PID/stat")
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return rssMB, (ut + st) / clockTicks, nil
}
