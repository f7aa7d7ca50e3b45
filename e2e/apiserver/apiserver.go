// Package apiserver runs a real control plane for end-to-end tests: Debian's
// etcd (package etcd-server) and kube-apiserver built from k8s.io/kubernetes
// by e2e/kubetools, with generated certificates, an admin kubeconfig,
// per-user kubeconfigs (to test RBAC) and teardown.
//
// Both servers are child processes of the test, killed if it dies
// (Pdeathsig). They run in the caller's network namespace, or in a named one
// (Options.NetNS), and listen on Options.Address only: run tests under
// e2e/isolate so that namespace is a throwaway one. A namespace without a
// default route needs --advertise-address, which Start always passes.
//
// No controller manager runs: tests create Services, EndpointSlices and Nodes
// themselves, which is exactly what a service proxy reads.
package apiserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"
)

// Options configures Start. Dir is required; the rest has defaults.
type Options struct {
	// Dir holds certificates, etcd's data, kubeconfigs and the servers'
	// logs (etcd.log, kube-apiserver.log). Use t.TempDir().
	Dir string
	// Address is where both servers listen and what the apiserver
	// advertises (default 127.0.0.1).
	Address netip.Addr
	// Port is the apiserver's secure port (default: a free one).
	Port int
	// ServiceCIDR is --service-cluster-ip-range (default 10.96.0.0/16).
	ServiceCIDR string
	// APIServerBinary is kube-apiserver (default: Binary("kube-apiserver"),
	// which builds it on first use).
	APIServerBinary string
	// EtcdBinary is etcd (default: etcd from PATH, /usr/bin/etcd on Debian).
	EtcdBinary string
	// NetNS, if set, names a network namespace (ip netns) to run both
	// servers in.
	NetNS string
	// Dial, if set, is how clients of this process reach Address (e.g.
	// topology.Host.Dial when the servers run in another namespace).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// ExtraArgs are appended to kube-apiserver's arguments.
	ExtraArgs []string
}

// Server is a running etcd + kube-apiserver.
type Server struct {
	opts Options
	pki  *pki
	// URL is the apiserver's address, https://ADDRESS:PORT.
	URL string
	// Kubeconfig is an admin (system:masters) kubeconfig file.
	Kubeconfig string

	etcd      *proc
	apiserver *proc
	etcdURL   string
}

// proc is a child process and its exit.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start runs etcd and kube-apiserver and waits until the apiserver is
// ready (/readyz answers ok) or ctx ends. On error nothing is left running.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Dir == "" {
		return nil, errors.New("apiserver: Options.Dir is required")
	}
	if !opts.Address.IsValid() {
		opts.Address = netip.MustParseAddr("127.0.0.1")
	}
	if opts.ServiceCIDR == "" {
		opts.ServiceCIDR = "10.96.0.0/16"
	}
	if opts.EtcdBinary == "" {
		p, err := exec.LookPath("etcd")
		if err != nil {
			return nil, fmt.Errorf("apiserver: etcd not found (apt-get install etcd-server): %w", err)
		}
		opts.EtcdBinary = p
	}
	if opts.APIServerBinary == "" {
		p, err := Binary(ctx, "kube-apiserver")
		if err != nil {
			return nil, err
		}
		opts.APIServerBinary = p
	}
	ports, err := freePorts(opts, 3)
	if err != nil {
		return nil, err
	}
	if opts.Port == 0 {
		opts.Port = ports[2]
	}
	s := &Server{opts: opts}
	addr := opts.Address.String()
	s.URL = "https://" + net.JoinHostPort(addr, strconv.Itoa(opts.Port))
	s.etcdURL = "http://" + net.JoinHostPort(addr, strconv.Itoa(ports[0]))
	peerURL := "http://" + net.JoinHostPort(addr, strconv.Itoa(ports[1]))

	if s.pki, err = writePKI(opts.Dir, []netip.Addr{opts.Address}); err != nil {
		return nil, fmt.Errorf("apiserver: certificates: %w", err)
	}
	s.Kubeconfig = filepath.Join(opts.Dir, "admin.kubeconfig")
	if err := s.writeKubeconfig(s.Kubeconfig, s.pki.AdminCert, s.pki.AdminKey); err != nil {
		return nil, err
	}

	s.etcd, err = s.start("etcd", opts.EtcdBinary,
		"--name=e2e",
		"--data-dir="+filepath.Join(opts.Dir, "etcd"),
		"--listen-client-urls="+s.etcdURL,
		"--advertise-client-urls="+s.etcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=e2e="+peerURL,
		"--log-level=warn",
		// throwaway data: no fsync per write
		"--unsafe-no-fsync",
	)
	if err != nil {
		return nil, err
	}
	if err := s.startAPIServer(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// apiServerArgs are kube-apiserver's flags.
func (s *Server) apiServerArgs() []string {
	o := s.opts
	args := []string{
		"--etcd-servers=" + s.etcdURL,
		"--bind-address=" + o.Address.String(),
		"--advertise-address=" + o.Address.String(),
		"--secure-port=" + strconv.Itoa(o.Port),
		"--cert-dir=" + filepath.Join(o.Dir, "apiserver-certs"),
		"--tls-cert-file=" + s.pki.ServerCert,
		"--tls-private-key-file=" + s.pki.ServerKey,
		"--client-ca-file=" + s.pki.CACert,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + s.pki.ServiceAccountPub,
		"--service-account-signing-key-file=" + s.pki.ServiceAccountKey,
		"--service-cluster-ip-range=" + o.ServiceCIDR,
		"--authorization-mode=RBAC",
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--disable-admission-plugins=ServiceAccount",
		"--v=1",
	}
	if o.Address.IsLoopback() {
		// The apiserver refuses to publish a loopback address as the
		// endpoint of the "kubernetes" Service; without a reconciler that
		// Service simply has no endpoints, which no test here needs.
		args = append(args, "--endpoint-reconciler-type=none")
	}
	return append(args, o.ExtraArgs...)
}

func (s *Server) startAPIServer(ctx context.Context) error {
	var err error
	s.apiserver, err = s.start("kube-apiserver", s.opts.APIServerBinary, s.apiServerArgs()...)
	if err != nil {
		return err
	}
	return s.waitReady(ctx)
}

// RestartAPIServer stops kube-apiserver (SIGTERM) and starts it again on
// the same address and data, waiting until it is ready. etcd keeps running.
func (s *Server) RestartAPIServer(ctx context.Context) error {
	if err := s.StopAPIServer(); err != nil {
		return err
	}
	return s.StartAPIServer(ctx)
}

// StopAPIServer stops kube-apiserver only (clients see the connection go).
func (s *Server) StopAPIServer() error {
	if s.apiserver == nil {
		return nil
	}
	err := s.apiserver.stop()
	s.apiserver = nil
	return err
}

// StartAPIServer starts kube-apiserver again after StopAPIServer.
func (s *Server) StartAPIServer(ctx context.Context) error {
	if s.apiserver != nil {
		return errors.New("apiserver: already running")
	}
	return s.startAPIServer(ctx)
}

// Stop stops kube-apiserver and etcd. It is safe to call twice.
func (s *Server) Stop() {
	if s.apiserver != nil {
		if err := s.apiserver.stop(); err != nil {
			klog.ErrorS(err, "Stopping kube-apiserver")
		}
		s.apiserver = nil
	}
	if s.etcd != nil {
		if err := s.etcd.stop(); err != nil {
			klog.ErrorS(err, "Stopping etcd")
		}
		s.etcd = nil
	}
}

// RESTConfig returns an admin client configuration.
func (s *Server) RESTConfig() *rest.Config {
	return s.restConfig(s.pki.AdminCertData, s.pki.AdminKeyData)
}

func (s *Server) restConfig(cert, key []byte) *rest.Config {
	cfg := &rest.Config{
		Host:            s.URL,
		TLSClientConfig: rest.TLSClientConfig{CAData: s.pki.CAData, CertData: cert, KeyData: key},
		QPS:             1000,
		Burst:           2000,
		Timeout:         30 * time.Second,
	}
	if s.opts.Dial != nil {
		cfg.Dial = s.opts.Dial
	}
	return cfg
}

// Client returns an admin clientset.
func (s *Server) Client() (kubernetes.Interface, error) {
	c, err := kubernetes.NewForConfig(s.RESTConfig())
	if err != nil {
		return nil, fmt.Errorf("apiserver: admin client: %w", err)
	}
	return c, nil
}

// UserKubeconfig writes a kubeconfig that authenticates as user in groups
// with a client certificate, and returns its path. A ServiceAccount's user
// is "system:serviceaccount:NAMESPACE:NAME" in groups
// "system:serviceaccounts" and "system:serviceaccounts:NAMESPACE": RBAC
// bindings to the ServiceAccount then apply, so tests can check that a
// ClusterRole grants enough.
func (s *Server) UserKubeconfig(user string, groups ...string) (string, error) {
	base := "user-" + strings.NewReplacer(":", "_", "/", "_").Replace(user)
	cert, key, err := s.pki.clientCert(s.opts.Dir, base, user, groups)
	if err != nil {
		return "", err
	}
	path := filepath.Join(s.opts.Dir, base+".kubeconfig")
	if err := s.writeKubeconfig(path, cert, key); err != nil {
		return "", err
	}
	return path, nil
}

func (s *Server) writeKubeconfig(path, cert, key string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: s.URL, CertificateAuthority: s.pki.CACert}
	cfg.AuthInfos["user"] = &clientcmdapi.AuthInfo{ClientCertificate: cert, ClientKey: key}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "user"}
	cfg.CurrentContext = "e2e"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("apiserver: write kubeconfig %s: %w", path, err)
	}
	return nil
}

// start runs a server process with its output in Dir/NAME.log.
func (s *Server) start(name, binary string, args ...string) (*proc, error) {
	logPath := filepath.Join(s.opts.Dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("apiserver: %s log: %w", name, err)
	}
	argv := append([]string{binary}, args...)
	if s.opts.NetNS != "" {
		argv = append([]string{"ip", "netns", "exec", s.opts.NetNS}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("apiserver: start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	klog.V(2).InfoS("Started", "process", name, "pid", cmd.Process.Pid, "log", logPath)
	return p, nil
}

// stopGrace is how long stop waits after SIGTERM. kube-apiserver finishes
// its graceful termination in well under a second here, then lingers for
// tens of seconds while clients hold watches open; a test gains nothing by
// waiting for that.
const stopGrace = 5 * time.Second

// stop sends SIGTERM, and SIGKILL if the process is still there after
// stopGrace.
func (p *proc) stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		klog.V(2).InfoS("Killing after the grace period", "process", p.name, "grace", stopGrace)
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	return nil
}

// exited reports whether the process ended, and how.
func (p *proc) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// waitReady polls /readyz until it answers 200, the apiserver exits, or
// ctx ends (then the log's tail is in the error).
func (s *Server) waitReady(ctx context.Context) error {
	cfg := s.RESTConfig()
	cfg.Timeout = 5 * time.Second
	client, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return fmt.Errorf("apiserver: client: %w", err)
	}
	ticker := time.NewTicker(200 * time.Millisecond)
	defer ticker.Stop()
	var last string
	for {
		if done, err := s.apiserver.exited(); done {
			return fmt.Errorf("apiserver: kube-apiserver exited (%v); log tail:\n%s", err, s.logTail("kube-apiserver", 30))
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/readyz", nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("apiserver: not ready (last: %s): %w; log tail:\n%s", last, ctx.Err(), s.logTail("kube-apiserver", 30))
		case <-ticker.C:
		}
	}
}

// logTail returns the last n lines of a server's log.
func (s *Server) logTail(name string, n int) string {
	f, err := os.Open(filepath.Join(s.opts.Dir, name+".log"))
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// freePorts returns n ports free on the servers' address. When the servers
// run in another namespace the ports are fixed (that namespace is fresh).
func freePorts(opts Options, n int) ([]int, error) {
	if opts.NetNS != "" {
		return []int{2379, 2380, 6443}[:n], nil
	}
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(opts.Address.String(), "0"))
		if err != nil {
			return nil, fmt.Errorf("apiserver: free port on %s: %w", opts.Address, err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Binary returns the path of a kube binary ("kube-apiserver" or
// "kube-proxy") built by e2e/kubetools/build.sh, building it first if the
// cache has none (minutes on a cold machine). The environment variable
// SVCPROXY_KUBE_APISERVER / SVCPROXY_KUBE_PROXY overrides the path.
func Binary(ctx context.Context, name string) (string, error) {
	env := "SVCPROXY_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
	if p := os.Getenv(env); p != "" {
		return p, nil
	}
	script, err := buildScript()
	if err != nil {
		return "", err
	}
	klog.InfoS("Looking for a cached build (building it if missing: minutes on a cold cache)", "binary", name, "script", script)
	cmd := exec.CommandContext(ctx, script, name)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("apiserver: %s %s: %w", script, name, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	path := filepath.Join(lines[len(lines)-1], name)
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("apiserver: %s did not produce %s: %w", script, path, err)
	}
	return path, nil
}

// buildScript finds e2e/kubetools/build.sh next to this package's source.
func buildScript() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("apiserver: cannot locate the source tree")
	}
	script := filepath.Join(filepath.Dir(file), "..", "kubetools", "build.sh")
	if _, err := os.Stat(script); err != nil {
		return "", fmt.Errorf("apiserver: build script: %w", err)
	}
	return script, nil
}
