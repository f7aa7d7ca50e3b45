package proxier

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
)

// defaultStickyTimeout is Kubernetes' default ClientIP affinity timeout.
const defaultStickyTimeout = 10800 * time.Second

// ServicePorts converts a Service into its ServicePorts, keyed by name. It
// returns (nil, nil) for a service the proxy ignores (headless, ExternalName,
// no cluster IP) and an error naming the first invalid field otherwise; an
// invalid service contributes no ports at all.
func ServicePorts(svc *v1.Service) (map[ServicePortName]*ServicePort, error) {
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return nil, nil
	}
	if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == v1.ClusterIPNone {
		return nil, nil
	}
	name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	if errs := validation.IsDNS1123Label(svc.Name); svc.Name == "" || len(errs) > 0 {
		return nil, fmt.Errorf("invalid service name %q", svc.Name)
	}
	if errs := validation.IsDNS1123Label(svc.Namespace); svc.Namespace == "" || len(errs) > 0 {
		return nil, fmt.Errorf("invalid namespace %q", svc.Namespace)
	}

	clusterIPs, err := parseIPs("spec.clusterIPs", svc.Spec.ClusterIPs)
	if err != nil {
		return nil, err
	}
	if len(clusterIPs) == 0 {
		ip, err := parseIP("spec.clusterIP", svc.Spec.ClusterIP)
		if err != nil {
			return nil, err
		}
		clusterIPs = []netip.Addr{ip}
	}
	externalIPs, err := parseIPs("spec.externalIPs", svc.Spec.ExternalIPs)
	if err != nil {
		return nil, err
	}
	var lbIPs []netip.Addr
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		for i, ing := range svc.Status.LoadBalancer.Ingress {
			if ing.IP == "" {
				continue // hostname-only ingress: nothing to program
			}
			ip, err := parseIP(fmt.Sprintf("status.loadBalancer.ingress[%d].ip", i), ing.IP)
			if err != nil {
				return nil, err
			}
			lbIPs = append(lbIPs, ip)
		}
	}
	var ranges []netip.Prefix
	for i, r := range svc.Spec.LoadBalancerSourceRanges {
		// API validation allows space-padded ranges (a historical accident).
		p, err := netip.ParsePrefix(strings.TrimSpace(r))
		if err != nil {
			return nil, fmt.Errorf("spec.loadBalancerSourceRanges[%d] %q: %w", i, r, err)
		}
		ranges = append(ranges, p.Masked())
	}
	var sticky time.Duration
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		sticky = defaultStickyTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			secs := *c.ClientIP.TimeoutSeconds
			if secs <= 0 || secs > 86400 {
				return nil, fmt.Errorf("spec.sessionAffinityConfig.clientIP.timeoutSeconds %d out of range 1-86400", secs)
			}
			sticky = time.Duration(secs) * time.Second
		}
	}
	if len(svc.Spec.Ports) == 0 {
		return nil, errors.New("spec.ports is empty")
	}
	nodePortType := svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer
	externalLocal := svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal &&
		(nodePortType || len(externalIPs) > 0)
	internalLocal := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
	preferClose := svc.Spec.TrafficDistribution != nil && *svc.Spec.TrafficDistribution == v1.ServiceTrafficDistributionPreferClose
	healthCheckNodePort := 0
	if externalLocal && svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		healthCheckNodePort = int(svc.Spec.HealthCheckNodePort)
	}

	out := make(map[ServicePortName]*ServicePort, len(svc.Spec.Ports))
	for i, p := range svc.Spec.Ports {
		field := fmt.Sprintf("spec.ports[%d]", i)
		if len(svc.Spec.Ports) > 1 && p.Name == "" {
			return nil, fmt.Errorf("%s: a multi-port service needs a name on every port", field)
		}
		if p.Name != "" {
			// A Service port name is a DNS label (not an IANA service
			// name like a container port's: longer and all-digit names
			// are valid).
			if errs := validation.IsDNS1123Label(p.Name); len(errs) > 0 {
				return nil, fmt.Errorf("%s.name %q: %s", field, p.Name, errs[0])
			}
		}
		switch p.Protocol {
		case v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP:
		case "":
			return nil, fmt.Errorf("%s.protocol is missing", field)
		default:
			return nil, fmt.Errorf("%s.protocol %q is not TCP, UDP or SCTP", field, p.Protocol)
		}
		if p.Port < 1 || p.Port > 65535 {
			return nil, fmt.Errorf("%s.port %d out of range 1-65535", field, p.Port)
		}
		if p.NodePort < 0 || p.NodePort > 65535 {
			return nil, fmt.Errorf("%s.nodePort %d out of range 1-65535", field, p.NodePort)
		}
		spn := ServicePortName{NamespacedName: name, Port: p.Name, Protocol: p.Protocol}
		if _, dup := out[spn]; dup {
			return nil, fmt.Errorf("%s: duplicate port name %q for protocol %s", field, p.Name, p.Protocol)
		}
		nodePort := 0
		if nodePortType {
			nodePort = int(p.NodePort)
		}
		out[spn] = &ServicePort{
			Name:                     spn,
			ClusterIPs:               clusterIPs,
			Port:                     int(p.Port),
			NodePort:                 nodePort,
			ExternalIPs:              externalIPs,
			LoadBalancerIPs:          lbIPs,
			LoadBalancerSourceRanges: ranges,
			StickyTimeout:            sticky,
			ExternalPolicyLocal:      externalLocal,
			InternalPolicyLocal:      internalLocal,
			HealthCheckNodePort:      healthCheckNodePort,
			PreferClose:              preferClose,
			Scheduler:                svc.Annotations[SchedulerAnnotation],
		}
	}
	return out, nil
}

func parseIP(field, s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s %q is not an IP address", field, s)
	}
	if ip.Zone() != "" || ip.IsUnspecified() {
		return netip.Addr{}, fmt.Errorf("%s %q is not a usable IP address", field, s)
	}
	return ip.Unmap(), nil
}

func parseIPs(field string, in []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for i, s := range in {
		ip, err := parseIP(fmt.Sprintf("%s[%d]", field, i), s)
		if err != nil {
			return nil, err
		}
		out = append(out, ip)
	}
	return out, nil
}

// SliceEndpoints converts an EndpointSlice into endpoints per ServicePortName
// of its owning service (label kubernetes.io/service-name). Each slice port
// resolves its own number, so a named targetPort may differ between pods in
// different slices. It returns an error naming the first invalid field.
func SliceEndpoints(slice *discovery.EndpointSlice) (map[ServicePortName][]Endpoint, error) {
	svcName := slice.Labels[discovery.LabelServiceName]
	if svcName == "" {
		return nil, fmt.Errorf("label %s is missing", discovery.LabelServiceName)
	}
	if slice.AddressType != discovery.AddressTypeIPv4 && slice.AddressType != discovery.AddressTypeIPv6 {
		return nil, nil // FQDN slices are not proxied
	}
	name := types.NamespacedName{Namespace: slice.Namespace, Name: svcName}
	out := make(map[ServicePortName][]Endpoint, len(slice.Ports))
	for i, p := range slice.Ports {
		field := fmt.Sprintf("ports[%d]", i)
		if p.Port == nil {
			return nil, fmt.Errorf("%s.port is missing", field)
		}
		if *p.Port < 1 || *p.Port > 65535 {
			return nil, fmt.Errorf("%s.port %d out of range 1-65535", field, *p.Port)
		}
		proto := v1.ProtocolTCP
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		portName := ""
		if p.Name != nil {
			portName = *p.Name
		}
		spn := ServicePortName{NamespacedName: name, Port: portName, Protocol: proto}
		if _, dup := out[spn]; dup {
			return nil, fmt.Errorf("%s: duplicate port name %q", field, portName)
		}
		eps := make([]Endpoint, 0, len(slice.Endpoints))
		for j, ep := range slice.Endpoints {
			if len(ep.Addresses) == 0 {
				return nil, fmt.Errorf("endpoints[%d].addresses is empty", j)
			}
			ip, err := parseIP(fmt.Sprintf("endpoints[%d].addresses[0]", j), ep.Addresses[0])
			if err != nil {
				return nil, err
			}
			e := Endpoint{
				IP:          ip,
				Port:        int(*p.Port),
				Ready:       ep.Conditions.Ready == nil || *ep.Conditions.Ready,
				Serving:     ep.Conditions.Serving == nil || *ep.Conditions.Serving,
				Terminating: ep.Conditions.Terminating != nil && *ep.Conditions.Terminating,
			}
			if e.Terminating && ep.Conditions.Ready == nil {
				e.Ready = false
			}
			if ep.NodeName != nil {
				e.NodeName = *ep.NodeName
			}
			if ep.Zone != nil {
				e.Zone = *ep.Zone
			}
			if ep.Hints != nil {
				for _, z := range ep.Hints.ForZones {
					e.ZoneHints = append(e.ZoneHints, z.Name)
				}
			}
			eps = append(eps, e)
		}
		out[spn] = eps
	}
	return out, nil
}
