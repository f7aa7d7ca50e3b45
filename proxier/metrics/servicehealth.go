package metrics

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
)

// ServiceHealthOptions configures a ServiceHealthServer.
type ServiceHealthOptions struct {
	// Addresses are the node addresses the health check ports listen on
	// (those nodePortAddresses select); empty means all addresses.
	Addresses []netip.Addr
	// Healthy reports whether the proxy itself is healthy (serviceProxyHealthy
	// in the answer; false turns every answer into a 503). Nil means true.
	Healthy func() bool
	// Listen opens a listener; nil means net.Listen. Tests inject their own.
	Listen func(network, address string) (net.Listener, error)
}

// ServiceHealthServer is the health-check node port server: for every
// LoadBalancer service with externalTrafficPolicy: Local it listens on the
// service's healthCheckNodePort and answers, as kube-proxy does, 200 when
// this node has a ready endpoint of the service and 503 when it has none,
// so that load balancers send traffic only to nodes that can serve it
// locally. Sync keeps the listeners and counts in step with a snapshot.
type ServiceHealthServer struct {
	opts ServiceHealthOptions

	mu       sync.Mutex
	services map[types.NamespacedName]*hcService
}

// hcService is one service's health check port.
type hcService struct {
	port      int
	servers   []*http.Server
	endpoints int
}

// NewServiceHealthServer returns a server with no ports open; Sync opens them.
func NewServiceHealthServer(opts ServiceHealthOptions) *ServiceHealthServer {
	if opts.Listen == nil {
		opts.Listen = net.Listen
	}
	return &ServiceHealthServer{opts: opts, services: map[types.NamespacedName]*hcService{}}
}

// HealthCheckPorts returns, per service with a health check node port in
// snap, the port and its local ready endpoint count on node: the distinct
// IPs of ready endpoints on node over all the service's ports, as kube-proxy
// counts them (terminating endpoints do not count, so a load balancer drains
// a node whose local endpoints are going away).
func HealthCheckPorts(snap proxier.Snapshot, node proxier.Node) (ports map[types.NamespacedName]int, local map[types.NamespacedName]int) {
	ports = map[types.NamespacedName]int{}
	local = map[types.NamespacedName]int{}
	ips := map[types.NamespacedName]map[netip.Addr]bool{}
	for spn, sp := range snap.Services {
		if sp.HealthCheckNodePort == 0 {
			continue
		}
		ports[spn.NamespacedName] = sp.HealthCheckNodePort
		if ips[spn.NamespacedName] == nil {
			ips[spn.NamespacedName] = map[netip.Addr]bool{}
		}
		for _, e := range snap.Endpoints[spn] {
			if e.Ready && node.Name != "" && e.NodeName == node.Name {
				ips[spn.NamespacedName][e.IP] = true
			}
		}
	}
	for name, set := range ips {
		local[name] = len(set)
	}
	return ports, local
}

// Sync opens the ports of new services, closes those of services that went
// (or changed port), and updates every local endpoint count. A port that
// cannot be opened is logged and retried on the next Sync; the error
// returned joins these failures.
func (s *ServiceHealthServer) Sync(snap proxier.Snapshot, node proxier.Node) error {
	ports, local := HealthCheckPorts(snap, node)
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, svc := range s.services {
		if port, ok := ports[name]; !ok || port != svc.port {
			klog.V(2).InfoS("Closing health check node port", "service", name, "port", svc.port)
			svc.close()
			delete(s.services, name)
		}
	}
	var errs []error
	for name, port := range ports {
		svc := s.services[name]
		if svc == nil {
			var err error
			if svc, err = s.open(name, port); err != nil {
				klog.ErrorS(err, "Cannot open health check node port; retrying on the next sync", "service", name, "port", port)
				errs = append(errs, err)
				continue
			}
			klog.V(2).InfoS("Opened health check node port", "service", name, "port", port)
			s.services[name] = svc
		}
		svc.endpoints = local[name]
	}
	return errors.Join(errs...)
}

// open listens on port on every configured address.
func (s *ServiceHealthServer) open(name types.NamespacedName, port int) (*hcService, error) {
	svc := &hcService{port: port}
	addrs := []string{net.JoinHostPort("", strconv.Itoa(port))}
	if len(s.opts.Addresses) > 0 {
		addrs = addrs[:0]
		for _, a := range s.opts.Addresses {
			addrs = append(addrs, net.JoinHostPort(a.String(), strconv.Itoa(port)))
		}
	}
	for _, addr := range addrs {
		l, err := s.opts.Listen("tcp", addr)
		if err != nil {
			svc.close()
			return nil, fmt.Errorf("health check node port of %s: listen on %s: %w", name, addr, err)
		}
		srv := &http.Server{Handler: s.handler(name)}
		svc.servers = append(svc.servers, srv)
		go func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				klog.ErrorS(err, "Health check node port server stopped", "service", name, "address", addr)
			}
		}()
	}
	return svc, nil
}

func (svc *hcService) close() {
	for _, srv := range svc.servers {
		_ = srv.Close()
	}
}

// Close closes every port.
func (s *ServiceHealthServer) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, svc := range s.services {
		svc.close()
		delete(s.services, name)
	}
}

// Ports returns the open health check ports by service, for tests and logs.
func (s *ServiceHealthServer) Ports() map[types.NamespacedName]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[types.NamespacedName]int, len(s.services))
	for name, svc := range s.services {
		out[name] = svc.port
	}
	return out
}

// serviceHealthBody is kube-proxy's answer on a health check node port.
type serviceHealthBody struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

// handler answers for one service.
func (s *ServiceHealthServer) handler(name types.NamespacedName) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		svc, ok := s.services[name]
		count := 0
		if ok {
			count = svc.endpoints
		}
		s.mu.Unlock()
		if !ok {
			http.Error(w, "health check closed", http.StatusServiceUnavailable)
			return
		}
		healthy := s.opts.Healthy == nil || s.opts.Healthy()
		var body serviceHealthBody
		body.Service.Namespace, body.Service.Name = name.Namespace, name.Name
		body.LocalEndpoints, body.ServiceProxyHealthy = count, healthy
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
		if count > 0 && healthy {
			w.WriteHeader(http.StatusOK)
		} else {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		out, _ := json.MarshalIndent(body, "", "\t")
		_, _ = w.Write(out)
	})
}
