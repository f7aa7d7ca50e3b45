// Package lab is svcproxy's teaching lab: it builds a small cluster out of
// network namespaces (e2e/topology), runs svcproxy in the chosen mode on
// every node, sends 10, 100 and 1000 requests from a client pod through a
// service, and prints how they spread over the pods, the rules the mode
// made on each node, and the path a packet takes, hop by hop.
package lab

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/svcproxy/svcproxy/e2e/topology"
	"github.com/svcproxy/svcproxy/e2e/traffic"
)

// Prefix names the lab's network namespaces ("svcplab-k8s-ctr", ...).
const Prefix = "svcplab"

// Options configure a lab run.
type Options struct {
	// Mode is the svcproxy mode: iptables, ipvs or userspace.
	Mode string
	// Binary is the svcproxy binary run inside the nodes and pods.
	Binary string
	// Scenario is the lab to build; nil means Classic().
	Scenario *Scenario
	// Keep leaves the namespaces and processes running for exploration.
	Keep bool
	// Out receives the lab's report.
	Out io.Writer
}

// Down removes a lab left by --keep.
func Down() error { return topology.RemoveByPrefix(Prefix) }

// Run builds the lab, runs it and tears it down (unless Keep), also when
// ctx is cancelled (an interrupt).
func Run(ctx context.Context, o Options) (err error) {
	if o.Scenario == nil {
		if o.Scenario, err = Classic(); err != nil {
			return err
		}
	}
	sc, w := o.Scenario, o.Out
	start := time.Now()
	if err := Down(); err != nil {
		return fmt.Errorf("lab: remove the previous lab: %w", err)
	}
	section(w, "svcproxy lab: %s, mode %s", sc.Title, o.Mode)
	printTopology(w, sc)

	manifestDir := filepath.Join(os.TempDir(), "svcproxy-lab")
	if err := os.MkdirAll(manifestDir, 0o755); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	cluster, err := topology.Build(ctx, sc.spec(Prefix))
	if err != nil {
		return fmt.Errorf("lab: build the cluster: %w", err)
	}
	defer func() {
		if o.Keep && err == nil {
			return
		}
		if cerr := cluster.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("lab: tear down: %w", cerr)
		}
	}()

	for pod, ports := range sc.serverPorts() {
		if _, err := cluster.Pod(pod).Start(o.Binary, "whoami", "--name", pod, "--tcp", joinInts(ports), "--udp", joinInts(ports)); err != nil {
			return fmt.Errorf("lab: start whoami in %s: %w", pod, err)
		}
	}
	manifests := sc.manifests(cluster)
	if err := os.WriteFile(filepath.Join(manifestDir, "services.yaml"), []byte(manifests), 0o644); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	for _, node := range cluster.Nodes {
		args := []string{"--mode=" + o.Mode, "--source=file:" + manifestDir,
			"--hostname-override=" + node.Name, "--cluster-cidr=" + topology.ClusterCIDR, "--min-sync-period=100ms"}
		if o.Mode == "ipvs" {
			// the service range is on-link on the fabric: without strict
			// ARP nodes answer ARP for each other's kube-ipvs0 addresses
			args = append(args, "--ipvs-strict-arp")
		}
		if _, err := node.Start(o.Binary, args...); err != nil {
			return fmt.Errorf("lab: start svcproxy on %s: %w", node.Name, err)
		}
	}
	fmt.Fprintf(w, "svcproxy --mode=%s runs on every node, reading the Services and EndpointSlices in %s.\n", o.Mode, manifestDir)

	client := cluster.Pod(sc.Client)
	for _, svc := range sc.Services {
		if err := runService(ctx, w, cluster, client, svc, sc.Requests); err != nil {
			return err
		}
	}
	svc := sc.Services[0]
	section(w, "The rules svcproxy made (%s mode)", o.Mode)
	if err := showRules(ctx, w, cluster, o.Mode, svc); err != nil {
		return err
	}
	section(w, "How a packet travels: %s -> %s:%d", sc.Client, svc.ClusterIP, svc.Port)
	explainOut, err := client.Node.Run(ctx, o.Binary, "explain", "--mode="+o.Mode, "--protocol="+strings.ToLower(protocolOf(svc)), fmt.Sprintf("%s:%d", svc.ClusterIP, svc.Port))
	if err != nil {
		return fmt.Errorf("lab: explain: %w", err)
	}
	fmt.Fprintf(w, "$ ip netns exec %s svcproxy explain --mode=%s %s:%d\n%s\n", client.Node.NS, o.Mode, svc.ClusterIP, svc.Port, explainOut)
	fmt.Fprint(w, hops(o.Mode, sc, svc))
	if o.Keep {
		printKeep(w, cluster, sc, o.Mode)
	} else {
		fmt.Fprintf(w, "\nLab done in %s; namespaces removed. Run with --keep to explore them yourself.\n", time.Since(start).Round(100*time.Millisecond))
	}
	return nil
}

// runService waits for a service to answer, shows one answer and sends
// each batch of requests, printing the spread.
func runService(ctx context.Context, w io.Writer, c *topology.Cluster, client *topology.Pod, svc ScenarioService, batches []int) error {
	addr := net(svc.ClusterIP, svc.Port)
	udp := strings.EqualFold(svc.Protocol, "UDP")
	send := func(n int) traffic.Result {
		if udp {
			return traffic.UDP(ctx, client.Dial, addr, n, 2*time.Second)
		}
		return traffic.HTTP(ctx, client.Dial, "http://"+addr+"/", n, 2*time.Second)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := send(1)
		if r.Errors == 0 {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("lab: %s does not answer from %s after 30s: %v", addr, client.Name, r.FirstError)
		}
		time.Sleep(200 * time.Millisecond)
	}
	section(w, "Service %s/%s %s -> pods %s", namespaceOf(svc), svc.Name, addr, strings.Join(svc.Pods, ", "))
	if !udp {
		answer, err := firstAnswer(ctx, client, "http://"+addr+"/")
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "$ ip netns exec %s curl -s http://%s/      # one request, as kubectl exec %s -- curl would\n%s\n",
			client.NS, addr, client.Name, indent(answer))
	}
	for _, n := range batches {
		r := send(n)
		fmt.Fprintf(w, "%d requests from %s:\n", n, client.Name)
		if err := r.Table(w, svc.Pods); err != nil {
			return err
		}
		if r.Errors > 0 {
			return fmt.Errorf("lab: %d of %d requests to %s failed: %v", r.Errors, n, addr, r.FirstError)
		}
		fmt.Fprintf(w, "  latency p50 %v, p99 %v\n\n", r.Percentile(50).Round(time.Microsecond), r.Percentile(99).Round(time.Microsecond))
	}
	return nil
}

// firstAnswer fetches one whoami answer from inside the client pod.
func firstAnswer(ctx context.Context, client *topology.Pod, url string) (string, error) {
	body, err := traffic.Fetch(ctx, client.Dial, url, 2*time.Second)
	if err != nil {
		return "", fmt.Errorf("lab: %s: %w", url, err)
	}
	return body, nil
}

// ruleView is how the lab shows one node's rules for a service in a mode,
// and what it ignores when comparing nodes (counters, local proxy ports).
type ruleView struct {
	command   []string
	keep      func(line, svc string) bool
	normalise *regexp.Regexp
}

var ruleViews = map[string]ruleView{
	"iptables": {
		command:   []string{"iptables-save", "-t", "nat"},
		keep:      func(line, svc string) bool { return strings.Contains(line, svc) },
		normalise: regexp.MustCompile(`^\[\d+:\d+\] `),
	},
	"userspace": {
		command:   []string{"iptables-save", "-t", "nat"},
		keep:      func(line, svc string) bool { return strings.Contains(line, svc) },
		normalise: regexp.MustCompile(`--to-ports \d+`),
	},
	"ipvs": {
		command:   []string{"ipvsadm", "-Ln"},
		keep:      func(line, _ string) bool { return true },
		normalise: regexp.MustCompile(`\s+\d+\s+\d+\s*$`),
	},
}

// showRules prints the first node's rules for svc and checks that every
// node holds the same ones.
func showRules(ctx context.Context, w io.Writer, c *topology.Cluster, mode string, svc ScenarioService) error {
	view, ok := ruleViews[mode]
	if !ok {
		return fmt.Errorf("lab: no rule view for mode %q", mode)
	}
	key := namespaceOf(svc) + "/" + svc.Name
	var first []string
	fmt.Fprintf(w, "%-12s %6s  %s\n", "node", "lines", "same as "+c.Nodes[0].Name)
	for i, node := range c.Nodes {
		out, err := node.Run(ctx, view.command...)
		if err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		var lines, norm []string
		for _, l := range strings.Split(string(out), "\n") {
			if l != "" && view.keep(l, key) {
				lines = append(lines, l)
				norm = append(norm, view.normalise.ReplaceAllString(l, ""))
			}
		}
		if i == 0 {
			first = norm
			defer func(lines []string) {
				fmt.Fprintf(w, "\n$ ip netns exec %s %s   # the lines for %s\n%s\n", node.NS, strings.Join(view.command, " "), key, indent(strings.Join(lines, "\n")))
				if mode == "ipvs" {
					if addrs, err := node.Run(ctx, "ip", "-brief", "addr", "show", "kube-ipvs0"); err == nil {
						fmt.Fprintf(w, "$ ip netns exec %s ip -brief addr show kube-ipvs0\n%s\n", node.NS, indent(string(addrs)))
					}
				}
			}(lines)
		}
		fmt.Fprintf(w, "%-12s %6d  %v\n", node.Name, len(lines), slices.Equal(norm, first))
		if !slices.Equal(norm, first) {
			return fmt.Errorf("lab: node %s holds different rules for %s than %s", node.Name, key, c.Nodes[0].Name)
		}
	}
	fmt.Fprintln(w, "Every node holds the same rules: any node can send a packet to any pod.")
	return nil
}

func printTopology(w io.Writer, sc *Scenario) {
	fmt.Fprintln(w, "Nodes (each its own network namespace: its own netfilter, IPVS and routes):")
	for i, n := range sc.Nodes {
		role := "worker"
		if i == 0 {
			role = "control plane"
		}
		fmt.Fprintf(w, "  %-10s %-14s node IP %-14s pods %s\n", n.Name, "("+role+")", topology.NodeIP(i+1), strings.Join(n.Pods, ", "))
	}
	fmt.Fprintf(w, "Pods get 10.244.<node>.x over a point-to-point veth from their node; nodes route\n"+
		"each other's pod ranges over the fabric bridge (%s).\n", topology.FabricCIDR)
}

func printKeep(w io.Writer, c *topology.Cluster, sc *Scenario, mode string) {
	svc := sc.Services[0]
	client := c.Pod(sc.Client)
	section(w, "The lab is still running (--keep)")
	fmt.Fprintf(w, "Explore it (as root):\n")
	fmt.Fprintf(w, "  ip netns exec %s curl -s http://%s/ | grep Hostname\n", client.NS, net(svc.ClusterIP, svc.Port))
	fmt.Fprintf(w, "  for i in $(seq 100); do ip netns exec %s curl -s http://%s/ | grep Hostname; done | sort | uniq -c\n", client.NS, net(svc.ClusterIP, svc.Port))
	switch mode {
	case "ipvs":
		fmt.Fprintf(w, "  ip netns exec %s ipvsadm -Ln --stats\n", client.Node.NS)
	default:
		fmt.Fprintf(w, "  ip netns exec %s iptables -t nat -S SVCP-SERVICES\n", client.Node.NS)
	}
	fmt.Fprintf(w, "  ip netns exec %s svcproxy explain --mode=%s %s\n", client.Node.NS, mode, net(svc.ClusterIP, svc.Port))
	fmt.Fprintf(w, "  ip netns list | grep %s\n", Prefix)
	fmt.Fprintf(w, "Remove it with: svcproxy lab --down   (or make lab-down)\n")
}

func section(w io.Writer, format string, args ...any) {
	title := fmt.Sprintf(format, args...)
	fmt.Fprintf(w, "\n== %s %s\n", title, strings.Repeat("=", max(0, 74-len(title))))
}

func indent(s string) string {
	var b bytes.Buffer
	sc := bufio.NewScanner(strings.NewReader(strings.TrimRight(s, "\n")))
	for sc.Scan() {
		b.WriteString("    " + sc.Text() + "\n")
	}
	return b.String()
}

func joinInts(ports []int) string {
	var s []string
	for _, p := range slices.Compact(slices.Sorted(slices.Values(ports))) {
		s = append(s, strconv.Itoa(p))
	}
	return strings.Join(s, ",")
}

func net(ip string, port int) string {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return fmt.Sprintf("%s:%d", ip, port)
	}
	return netip.AddrPortFrom(addr, uint16(port)).String()
}

func namespaceOf(svc ScenarioService) string {
	if svc.Namespace == "" {
		return "default"
	}
	return svc.Namespace
}

func protocolOf(svc ScenarioService) string {
	if svc.Protocol == "" {
		return "TCP"
	}
	return svc.Protocol
}
