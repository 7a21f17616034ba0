package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/log"
	logklog "github.com/virtual-kubelet/virtual-kubelet/log/klogv2"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
)

type agentConfig struct {
	nodeName       string
	kubeconfig     string
	stateDir       string
	imagesFile     string
	repoDir        string
	targetDir      string
	nodeIP         string
	kubeletPort    int
	podSubnet      string // /24 prefix, e.g. "10.244.0."
	apiHost        string
	apiPort        string
	caCert, caKey  string
	kubeletVersion string
	backoffBase    time.Duration
	backoffMax     time.Duration
	// imageVars: extra ${NAME} variables of the images file (--image-var NAME=VALUE).
	imageVars map[string]string
}

// imageVarsFlag collects repeated --image-var NAME=VALUE flags.
type imageVarsFlag map[string]string

func (f imageVarsFlag) String() string { return fmt.Sprint(map[string]string(f)) }

func (f imageVarsFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("--image-var wants NAME=VALUE, got %q", s)
	}
	f[k] = v
	return nil
}

func runAgent(args []string) error {
	var c agentConfig
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&c.nodeName, "node-name", "kartflow-node", "name of the Node object")
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig of the agent (required)")
	fs.StringVar(&c.stateDir, "state-dir", "", "directory for pod files and logs (required)")
	fs.StringVar(&c.imagesFile, "images", "", "image -> binary mapping file (required)")
	fs.StringVar(&c.repoDir, "repo", "", "repository root, ${REPO} in the images file (required)")
	fs.StringVar(&c.targetDir, "cargo-target-dir", "", "cargo's target directory, ${CARGO_TARGET_DIR} in the images file (default REPO/target)")
	fs.StringVar(&c.nodeIP, "node-ip", "127.0.0.1", "the node's InternalIP; the kubelet API listens there")
	fs.IntVar(&c.kubeletPort, "kubelet-port", 10250, "port of the kubelet API (kubectl logs)")
	fs.StringVar(&c.podSubnet, "pod-subnet", "10.244.0.", "pods get <prefix>N/32 on lo, N in 2..254")
	fs.StringVar(&c.apiHost, "apiserver-host", "127.0.0.1", "KUBERNETES_SERVICE_HOST given to pods")
	fs.StringVar(&c.apiPort, "apiserver-port", "16443", "KUBERNETES_SERVICE_PORT given to pods")
	fs.StringVar(&c.caCert, "ca-cert", "", "cluster CA certificate (required)")
	fs.StringVar(&c.caKey, "ca-key", "", "cluster CA key, signs the kubelet API serving cert (required)")
	fs.StringVar(&c.kubeletVersion, "kubelet-version", "v0.0.0", "version the Node reports")
	fs.DurationVar(&c.backoffBase, "restart-backoff", 2*time.Second, "first container restart back-off (kubelet: 10s)")
	fs.DurationVar(&c.backoffMax, "restart-backoff-max", 60*time.Second, "maximum restart back-off (kubelet: 5m)")
	c.imageVars = map[string]string{}
	fs.Var(imageVarsFlag(c.imageVars), "image-var", "NAME=VALUE: ${NAME} in the images file's binaries (repeatable)")
	klog.InitFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	for n, v := range map[string]string{"kubeconfig": c.kubeconfig, "state-dir": c.stateDir, "images": c.imagesFile,
		"repo": c.repoDir, "ca-cert": c.caCert, "ca-key": c.caKey} {
		if v == "" {
			return fmt.Errorf("--%s is required", n)
		}
	}
	log.L = logklog.New(nil)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	restCfg, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", c.kubeconfig, err)
	}
	restCfg.QPS, restCfg.Burst = 50, 100
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	if c.targetDir == "" {
		c.targetDir = filepath.Join(c.repoDir, "target")
	}
	// Fail at start on a broken mapping file; pods re-read it.
	if _, err := loadImages(c.imagesFile, c.repoDir, c.targetDir, c.imageVars); err != nil {
		return err
	}

	// Pods of this node only; ConfigMaps/Secrets/Services everywhere (virtual-kubelet resolves
	// env from them).
	podFactory := informers.NewSharedInformerFactoryWithOptions(client, time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = "spec.nodeName=" + c.nodeName
		}))
	factory := informers.NewSharedInformerFactory(client, time.Minute)
	podInformer := podFactory.Core().V1().Pods()
	cmInformer := factory.Core().V1().ConfigMaps()
	secretInformer := factory.Core().V1().Secrets()
	svcInformer := factory.Core().V1().Services()

	broadcaster := record.NewBroadcaster()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "nodeagent", Host: c.nodeName})
	p, err := newProvider(c, client, podInformer.Lister(), recorder)
	if err != nil {
		return err
	}
	// Leftovers of an agent that was killed hard: pod processes and pod addresses.
	p.cleanupOrphans()
	defer p.shutdown()

	nc, err := node.NewNodeController(node.NaiveNodeProvider{}, c.nodeObject(), client.CoreV1().Nodes(),
		node.WithNodeEnableLeaseV1(client.CoordinationV1().Leases(corev1.NamespaceNodeLease), 40),
		node.WithNodeStatusUpdateErrorHandler(func(ctx context.Context, err error) error {
			klog.Warningf("node status update failed: %v", err)
			return nil
		}))
	if err != nil {
		return err
	}
	pc, err := node.NewPodController(node.PodControllerConfig{
		PodClient:         client.CoreV1(),
		PodInformer:       envlessPodInformer{podInformer},
		EventRecorder:     recorder,
		Provider:          p,
		ConfigMapInformer: cmInformer,
		SecretInformer:    secretInformer,
		ServiceInformer:   svcInformer,
	})
	if err != nil {
		return err
	}

	srv, err := c.kubeletServer(p, client)
	if err != nil {
		return err
	}
	go func() {
		if err := srv.ListenAndServeTLS("", ""); err != nil && err != http.ErrServerClosed {
			klog.Errorf("kubelet API server: %v", err)
			cancel()
		}
	}()
	defer srv.Close()

	podFactory.Start(ctx.Done())
	factory.Start(ctx.Done())
	errs := make(chan error, 2)
	go func() { errs <- fmt.Errorf("node controller stopped: %w", nc.Run(ctx)) }()
	select {
	case <-nc.Ready():
	case err := <-errs:
		return err
	case <-time.After(60 * time.Second):
		return fmt.Errorf("node %s did not register within 60 s", c.nodeName)
	}
	klog.Infof("node %s registered", c.nodeName)
	go func() { errs <- fmt.Errorf("pod controller stopped: %w", pc.Run(ctx, 4)) }()

	select {
	case s := <-sigs:
		klog.Infof("got %v: stopping all pods", s)
		return nil
	case err := <-errs:
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
}

func (c *agentConfig) nodeObject() *corev1.Node {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("32"),
		corev1.ResourceMemory:           resource.MustParse("64Gi"),
		corev1.ResourcePods:             resource.MustParse("250"),
		corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
	now := metav1.Now()
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg,
			LastHeartbeatTime: now, LastTransitionTime: now}
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: c.nodeName,
			Labels: map[string]string{
				"kubernetes.io/hostname": c.nodeName,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     runtime.GOARCH,
				"kartflow.dev/node":      "process",
			},
		},
		Status: corev1.NodeStatus{
			Capacity:    capacity,
			Allocatable: capacity,
			Conditions: []corev1.NodeCondition{
				cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "process node agent is ready"),
				cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", ""),
				cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", ""),
				cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", ""),
			},
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: c.nodeIP},
				{Type: corev1.NodeHostName, Address: c.nodeName},
			},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(c.kubeletPort)}},
			NodeInfo: corev1.NodeSystemInfo{
				OperatingSystem:         "linux",
				Architecture:            runtime.GOARCH,
				KubeletVersion:          c.kubeletVersion,
				ContainerRuntimeVersion: "kartflow-process://1",
				KernelVersion:           kernelVersion(),
				OSImage:                 osImage(),
			},
		},
	}
}

// kubeletServer serves the kubelet API subset virtual-kubelet implements (logs, exec, running pods,
// resource metrics) with a serving certificate signed by the cluster CA; clients present a
// CA-signed certificate (the apiserver's kubelet client cert) or a bearer token (auth.go).
func (c *agentConfig) kubeletServer(p *provider, client kubernetes.Interface) (*http.Server, error) {
	caPEM, err := os.ReadFile(c.caCert)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(c.caKey)
	if err != nil {
		return nil, err
	}
	caBlock, _ := pem.Decode(caPEM)
	keyBlock, _ := pem.Decode(keyPEM)
	if caBlock == nil || keyBlock == nil {
		return nil, fmt.Errorf("cannot decode %s or %s as PEM", c.caCert, c.caKey)
	}
	ca, err := x509.ParseCertificate(caBlock.Bytes)
	if err != nil {
		return nil, err
	}
	var caKey any
	if caKey, err = x509.ParsePKCS8PrivateKey(keyBlock.Bytes); err != nil {
		if caKey, err = x509.ParsePKCS1PrivateKey(keyBlock.Bytes); err != nil {
			return nil, fmt.Errorf("CA key %s: %w", c.caKey, err)
		}
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "system:node:" + c.nodeName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{c.nodeName, "localhost"},
		IPAddresses:  []net.IP{net.ParseIP(c.nodeIP)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	mux := http.NewServeMux()
	api.AttachPodRoutes(api.PodHandlerConfig{
		GetContainerLogs:   p.containerLogs,
		RunInContainer:     p.runInContainer,
		PortForward:        p.portForward,
		GetPods:            p.GetPods,
		GetMetricsResource: p.metricsResource,
	}, mux, true)
	return &http.Server{
		Addr:    net.JoinHostPort(c.nodeIP, strconv.Itoa(c.kubeletPort)),
		Handler: withAuth(client, c.nodeName, mux),
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
			ClientCAs:    pool,
			ClientAuth:   tls.VerifyClientCertIfGiven,
			MinVersion:   tls.VersionTLS12,
		},
		ReadHeaderTimeout: 10 * time.Second,
	}, nil
}

// podDir is where a pod's volumes, shim specs and service-account files live.
func (c *agentConfig) podDir(pod *corev1.Pod) string {
	return filepath.Join(c.stateDir, "pods", string(pod.UID))
}

// logDir keeps container logs after the pod is gone (for post-mortems); down.sh --purge deletes it.
func (c *agentConfig) logDir(pod *corev1.Pod) string {
	return filepath.Join(c.stateDir, "logs", pod.Namespace+"_"+pod.Name+"_"+string(pod.UID))
}

// kernelVersion and osImage fill `kubectl get nodes -o wide` like the kubelet does.
func kernelVersion() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

func osImage() string {
	b, _ := os.ReadFile("/etc/os-release")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return "linux"
}
