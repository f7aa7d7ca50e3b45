package lab

import (
	_ "embed"
	"fmt"
	"os"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/svcproxy/svcproxy/e2e/manifest"
	"github.com/svcproxy/svcproxy/e2e/topology"
)

// Scenario is a lab: the nodes and pods, the services, which pod sends the
// requests and how many. The default is classic.yaml; --scenario FILE takes
// the user's own in the same format.
type Scenario struct {
	// Title is printed at the top.
	Title string `json:"title"`
	// Nodes in order; the first is the control-plane node.
	Nodes []ScenarioNode `json:"nodes"`
	// Client is the pod that sends the requests (it runs no server).
	Client string `json:"client"`
	// Services are proxied by every node; each selects pods by name.
	Services []ScenarioService `json:"services"`
	// Requests are the batch sizes sent to each service, e.g. [10, 100, 1000].
	Requests []int `json:"requests"`
}

// ScenarioNode is a node and the pods it runs.
type ScenarioNode struct {
	Name string   `json:"name"`
	Pods []string `json:"pods"`
}

// ScenarioService is a Service and the pods behind it.
type ScenarioService struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace,omitempty"`
	ClusterIP string `json:"clusterIP"`
	// Type is ClusterIP (default), NodePort or LoadBalancer.
	Type       string `json:"type,omitempty"`
	Port       int    `json:"port"`
	TargetPort int    `json:"targetPort"`
	NodePort   int    `json:"nodePort,omitempty"`
	// Protocol is TCP (default) or UDP.
	Protocol        string   `json:"protocol,omitempty"`
	SessionAffinity bool     `json:"sessionAffinity,omitempty"`
	ExternalIPs     []string `json:"externalIPs,omitempty"`
	// Scheduler overrides the IPVS scheduler for this service.
	Scheduler string   `json:"scheduler,omitempty"`
	Pods      []string `json:"pods"`
}

//go:embed classic.yaml
var classicYAML []byte

// Classic returns the default scenario.
func Classic() (*Scenario, error) { return parseScenario(classicYAML, "classic.yaml") }

// LoadScenario reads a scenario file.
func LoadScenario(path string) (*Scenario, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	return parseScenario(data, path)
}

func parseScenario(data []byte, name string) (*Scenario, error) {
	var s Scenario
	if err := yaml.UnmarshalStrict(data, &s); err != nil {
		return nil, fmt.Errorf("scenario %s: %w", name, err)
	}
	if err := s.validate(); err != nil {
		return nil, fmt.Errorf("scenario %s: %w", name, err)
	}
	return &s, nil
}

func (s *Scenario) validate() error {
	if len(s.Nodes) == 0 {
		return fmt.Errorf("no nodes")
	}
	pods := map[string]bool{}
	for _, n := range s.Nodes {
		for _, p := range n.Pods {
			pods[p] = true
		}
	}
	if !pods[s.Client] {
		return fmt.Errorf("client %q is not a pod of any node", s.Client)
	}
	if len(s.Services) == 0 {
		return fmt.Errorf("no services")
	}
	for _, svc := range s.Services {
		if len(svc.Pods) == 0 {
			return fmt.Errorf("service %s selects no pods", svc.Name)
		}
		for _, p := range svc.Pods {
			if !pods[p] {
				return fmt.Errorf("service %s: pod %q is not on any node", svc.Name, p)
			}
			if p == s.Client {
				return fmt.Errorf("service %s: the client pod %q runs no server", svc.Name, p)
			}
		}
		if svc.Port < 1 || svc.Port > 65535 || svc.TargetPort < 1 || svc.TargetPort > 65535 {
			return fmt.Errorf("service %s: port and targetPort must be 1-65535", svc.Name)
		}
	}
	if len(s.Requests) == 0 {
		s.Requests = []int{10, 100, 1000}
	}
	return nil
}

// spec returns the topology for the scenario.
func (s *Scenario) spec(prefix string) topology.Spec {
	spec := topology.Spec{Prefix: prefix, External: true}
	for _, n := range s.Nodes {
		spec.Nodes = append(spec.Nodes, topology.NodeSpec{Name: n.Name, Pods: n.Pods})
	}
	return spec
}

// manifests renders every Service and EndpointSlice, with the pods'
// addresses from the built cluster.
func (s *Scenario) manifests(c *topology.Cluster) string {
	var b strings.Builder
	for _, svc := range s.Services {
		m := manifest.Service{
			Name: svc.Name, Namespace: svc.Namespace, ClusterIP: svc.ClusterIP, Type: svc.Type,
			Ports:       []manifest.Port{{Name: "http", Port: svc.Port, Target: strconv.Itoa(svc.TargetPort), NodePort: svc.NodePort, Protocol: svc.Protocol}},
			ExternalIPs: svc.ExternalIPs, Affinity: svc.SessionAffinity,
		}
		if svc.Scheduler != "" {
			m.Annotations = map[string]string{"svcproxy.io/ipvs-scheduler": svc.Scheduler}
		}
		b.WriteString(m.YAML())
		sl := manifest.Slice{Name: svc.Name + "-lab", Namespace: svc.Namespace, Service: svc.Name,
			Ports: []manifest.SlicePort{{Name: "http", Port: svc.TargetPort, Protocol: svc.Protocol}}}
		for _, p := range svc.Pods {
			pod := c.Pod(p)
			sl.Endpoints = append(sl.Endpoints, manifest.Endpoint{IP: pod.IP.String(), Node: pod.Node.Name})
		}
		b.WriteString(sl.YAML())
	}
	return b.String()
}

// serverPorts returns, per pod, the ports its whoami must serve.
func (s *Scenario) serverPorts() map[string][]int {
	out := map[string][]int{}
	for _, svc := range s.Services {
		for _, p := range svc.Pods {
			out[p] = append(out[p], svc.TargetPort)
		}
	}
	return out
}
