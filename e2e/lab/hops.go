package lab

import (
	"fmt"
	"strings"
)

// hops explains, step by step, how a request from the client pod reaches a
// pod on another node and how the answer comes back, in the given mode.
func hops(mode string, sc *Scenario, svc ScenarioService) string {
	client := sc.Client
	node := sc.Nodes[0].Name
	for _, n := range sc.Nodes {
		for _, p := range n.Pods {
			if p == client {
				node = n.Name
			}
		}
	}
	vip := net(svc.ClusterIP, svc.Port)
	var steps []string
	steps = append(steps,
		fmt.Sprintf("%s sends a SYN to %s. Nothing owns that address: it is a virtual IP. The pod's default route sends the packet over its veth to %s.", client, vip, node))
	switch mode {
	case "iptables":
		steps = append(steps,
			fmt.Sprintf("On %s the packet enters nat PREROUTING, which jumps to SVCP-SERVICES: one rule per service address; the one for %s jumps to the service's SVCP-SVC-… chain.", node, vip),
			"SVCP-SVC-… marks the packet for masquerading if it came from outside the pod network, then picks an endpoint with `-m statistic --mode random`: probability 1/3, then 1/2 of the rest, then the last one — a fair draw without any state.",
			fmt.Sprintf("The endpoint's SVCP-SEP-… chain DNATs the destination to the pod's IP and targetPort %d. conntrack records the translation, so later packets of the connection skip these chains.", svc.TargetPort),
			"Routing now sees a pod address: if the pod is on another node, the packet leaves over the fabric to that node (pod ranges are routed node to node); nat POSTROUTING masquerades it only if it was marked.",
			"The pod answers to the client's address; the reply crosses back through this node, where conntrack reverses the DNAT, so the client sees the answer come from "+vip+".")
	case "ipvs":
		steps = append(steps,
			fmt.Sprintf("%s holds %s on the dummy interface kube-ipvs0, so the kernel treats the packet as local and hands it to IPVS at INPUT.", node, svc.ClusterIP),
			fmt.Sprintf("IPVS finds the virtual server %s (ipvsadm -Ln) and its scheduler (rr by default) picks a real server: round robin sends request 1 to the first pod, 2 to the second, 3 to the third, and over again.", vip),
			"IPVS rewrites the destination to the real server (masquerade forwarding) and keeps the choice in its own connection table (ipvsadm -Lnc).",
			"The packet is routed to the pod's node over the fabric; a constant set of iptables rules with ipsets masquerades only traffic that needs it.",
			"The answer comes back through this node, where IPVS reverses the translation: the client sees "+vip+" answer.")
	case "userspace":
		steps = append(steps,
			fmt.Sprintf("On %s a nat rule REDIRECTs the packet to svcproxy's proxy socket for %s: a port the svcproxy process listens on.", node, vip),
			"svcproxy accepts the connection in user space, picks a backend round robin (or by client IP with affinity) and opens a second connection to the pod; if that fails it tries the next pod.",
			"svcproxy copies bytes between the two connections (splice, so the data stays in the kernel).",
			"The pod sees the connection come from the node, not from the client: the proxy is a real endpoint of the TCP connection.",
			"The answer goes back to svcproxy, which writes it to the client's connection; the client sees "+vip+" answer.")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Hop by hop:\n")
	for i, s := range steps {
		fmt.Fprintf(&b, "  %d. %s\n", i+1, s)
	}
	return b.String()
}
