package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
)

// markerEnv tags every pod process so leftovers of a hard-killed agent can be found (by the next
// agent and by down.sh) without matching on names.
const markerEnv = "KARTFLOW_NODEAGENT_POD"

// provider is the virtual-kubelet PodLifecycleHandler + PodNotifier that runs pods as processes.
type provider struct {
	cfg    agentConfig
	client kubernetes.Interface
	lister corev1listers.PodLister
	// events like the kubelet's (Started, Killing, Unhealthy, BackOff, Failed) for kubectl describe
	events record.EventRecorder

	mu   sync.Mutex
	pods map[string]*podRun // namespace/name
	ips  map[int]bool       // last octets in use
	// mountPoints counts the pods using each mount point the agent had to create on the host, so
	// the last one to go removes it again (see mountpoints.go).
	mountPoints map[string]int
	notify      func(*corev1.Pod)
	// metrics serves /metrics/resource (metrics.go).
	metrics *resourceMetrics
}

type podRun struct {
	pod         *corev1.Pod // spec as first seen (env unresolved), status kept by us
	key         string
	ip          string
	dir, logDir string
	ctx         context.Context
	cancel      context.CancelFunc
	inits, ctrs []*ctrRun
	initialized bool
	initFailed  bool
	deleting    bool
	deleted     bool
	// ipReleased: the pod finished (Succeeded/Failed); its address went back to the pool.
	ipReleased bool
	startTime  metav1.Time
	// created: mount points this pod holds a reference to (p.mountPoints), in creation order.
	created []string
}

type ctrRun struct {
	c      corev1.Container
	init   bool
	status corev1.ContainerStatus
	spec   *shimSpec // resolved command, env and mounts; nil until the pod is set up
	pid    int       // current process (and process group) or 0
	exited chan struct{}
	ready  bool
	// started: the startup probe succeeded (or there is none) for the current process.
	started bool
	// killReason is set when the agent kills the process (liveness), for its termination state.
	killReason string
}

func newProvider(c agentConfig, client kubernetes.Interface, lister corev1listers.PodLister, events record.EventRecorder) (*provider, error) {
	for _, d := range []string{"pods", "logs"} {
		if err := os.MkdirAll(filepath.Join(c.stateDir, d), 0o755); err != nil {
			return nil, err
		}
	}
	return &provider{cfg: c, client: client, lister: lister, events: events,
		pods: map[string]*podRun{}, ips: map[int]bool{}, mountPoints: map[string]int{},
		metrics: newResourceMetrics("/proc")}, nil
}

func podKey(ns, name string) string { return ns + "/" + name }

// NotifyPods implements node.PodNotifier.
func (p *provider) NotifyPods(_ context.Context, f func(*corev1.Pod)) {
	p.mu.Lock()
	p.notify = f
	p.mu.Unlock()
}

// CreatePod starts the pod asynchronously; its progress is reported through NotifyPods.
func (p *provider) CreatePod(_ context.Context, pod *corev1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	// virtual-kubelet hands over a copy whose env it resolved before the pod had an IP; use the
	// informer's copy (see env.go).
	if orig, err := p.lister.Pods(pod.Namespace).Get(pod.Name); err == nil && orig.UID == pod.UID {
		pod = orig.DeepCopy()
	}
	p.mu.Lock()
	if old, ok := p.pods[key]; ok {
		p.mu.Unlock()
		return samePod(old, pod)
	}
	ip := p.cfg.nodeIP
	if !pod.Spec.HostNetwork {
		n := 0
		for i := 2; i < 255; i++ {
			if !p.ips[i] {
				n = i
				break
			}
		}
		if n == 0 {
			p.mu.Unlock()
			return fmt.Errorf("no free pod address in %s0/24", p.cfg.podSubnet)
		}
		p.ips[n] = true
		ip = p.cfg.podSubnet + strconv.Itoa(n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	pr := &podRun{pod: pod, key: key, ip: ip, dir: p.cfg.podDir(pod), logDir: p.cfg.logDir(pod),
		ctx: ctx, cancel: cancel, startTime: metav1.Now()}
	for i := range pod.Spec.InitContainers {
		pr.inits = append(pr.inits, newCtrRun(pod.Spec.InitContainers[i], true))
	}
	for i := range pod.Spec.Containers {
		pr.ctrs = append(pr.ctrs, newCtrRun(pod.Spec.Containers[i], false))
	}
	p.pods[key] = pr
	p.mu.Unlock()
	if !pod.Spec.HostNetwork {
		if out, err := exec.Command("ip", "addr", "replace", ip+"/32", "dev", "lo").CombinedOutput(); err != nil {
			klog.Errorf("pod %s: ip addr add %s: %v: %s", key, ip, err, out)
		}
	}
	klog.Infof("pod %s: starting with IP %s", key, ip)
	p.notifyPod(pr)
	go p.runPod(pr)
	return nil
}

func newCtrRun(c corev1.Container, init bool) *ctrRun {
	return &ctrRun{c: c, init: init, status: corev1.ContainerStatus{
		Name: c.Name, Image: c.Image, ImageID: c.Image,
		State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}},
	}}
}

// UpdatePod: nothing a process can pick up changes in place (like image or env changes, which
// the API forbids anyway).
func (p *provider) UpdatePod(_ context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	old, ok := p.pods[podKey(pod.Namespace, pod.Name)]
	p.mu.Unlock()
	if ok {
		return samePod(old, pod)
	}
	return nil
}

// samePod fails (so virtual-kubelet retries later) while an earlier pod of the same name, e.g. a
// StatefulSet's previous incarnation, is still stopping.
func samePod(old *podRun, pod *corev1.Pod) error {
	if old.pod.UID != pod.UID {
		return fmt.Errorf("pod %s: the previous pod of that name (uid %s) is still stopping", old.key, old.pod.UID)
	}
	return nil
}

// DeletePod stops the pod's processes (SIGTERM, grace period, SIGKILL) in the background, then
// reports all containers terminated so virtual-kubelet removes the pod object.
func (p *provider) DeletePod(_ context.Context, pod *corev1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	p.mu.Lock()
	pr, ok := p.pods[key]
	if !ok || pr.pod.UID != pod.UID {
		p.mu.Unlock()
		return errdefs.NotFoundf("pod %s not found", key)
	}
	if pr.deleting {
		p.mu.Unlock()
		return nil
	}
	pr.deleting = true
	p.mu.Unlock()
	grace := int64(30)
	if pod.DeletionGracePeriodSeconds != nil {
		grace = *pod.DeletionGracePeriodSeconds
	} else if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = *pod.Spec.TerminationGracePeriodSeconds
	}
	go func() {
		p.stopPod(pr, time.Duration(grace)*time.Second)
		p.mu.Lock()
		pr.deleted = true
		p.mu.Unlock()
		p.notifyPod(pr)
		p.forget(pr)
		// Like the kubelet, remove the object once its processes are gone; virtual-kubelet
		// alone would wait for the whole grace period even when the pod stopped at once.
		zero := int64(0)
		err := p.client.CoreV1().Pods(pod.Namespace).Delete(context.Background(), pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			klog.Warningf("pod %s: final delete: %v", key, err)
		}
	}()
	return nil
}

// stopPod cancels the pod's loops and kills its process groups: SIGTERM, then SIGKILL after grace.
func (p *provider) stopPod(pr *podRun, grace time.Duration) {
	pr.cancel()
	p.mu.Lock()
	var waits []chan struct{}
	var pids []int
	var crs []*ctrRun
	for _, cr := range append(append([]*ctrRun{}, pr.inits...), pr.ctrs...) {
		if cr.pid != 0 {
			pids = append(pids, cr.pid)
			waits = append(waits, cr.exited)
			crs = append(crs, cr)
		}
	}
	p.mu.Unlock()
	if len(pids) > 0 {
		p.events.Eventf(pr.pod, corev1.EventTypeNormal, "Killing", "Stopping %d container(s), grace period %v", len(pids), grace)
	}
	end := time.Now().Add(grace)
	for i, cr := range crs {
		go func(pid int) {
			p.preStop(pr, cr, end)
			_ = syscall.Kill(-pid, syscall.SIGTERM)
		}(pids[i])
	}
	deadline := time.After(time.Until(end))
	for i, w := range waits {
		select {
		case <-w:
		case <-deadline:
			for _, pid := range pids[i:] {
				_ = syscall.Kill(-pid, syscall.SIGKILL)
			}
			<-w
		}
	}
	// Children that left the group's leader behind (daemonised helpers) go too.
	for _, pid := range pids {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// forget releases the pod's address and files once it is gone; logs stay for post-mortems.
func (p *provider) forget(pr *podRun) {
	p.mu.Lock()
	if cur, ok := p.pods[pr.key]; ok && cur == pr {
		delete(p.pods, pr.key)
	}
	p.releaseIPLocked(pr)
	p.releaseMountPointsLocked(pr)
	p.mu.Unlock()
	if err := os.RemoveAll(pr.dir); err != nil {
		klog.Warningf("pod %s: removing %s: %v", pr.key, pr.dir, err)
	}
	klog.Infof("pod %s: removed", pr.key)
}

// shutdown stops every pod when the agent exits, so no process outlives it.
func (p *provider) shutdown() {
	p.mu.Lock()
	var all []*podRun
	for _, pr := range p.pods {
		all = append(all, pr)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, pr := range all {
		wg.Add(1)
		go func(pr *podRun) {
			defer wg.Done()
			p.stopPod(pr, 10*time.Second)
			p.forget(pr)
		}(pr)
	}
	wg.Wait()
}

// cleanupOrphans kills pod processes and removes pod addresses left by an agent that could not
// clean up (SIGKILL, crash).
func (p *provider) cleanupOrphans() {
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	marker := []byte(markerEnv + "=" + p.cfg.nodeName + "/")
	for _, f := range procs {
		b, err := os.ReadFile(f)
		if err != nil || !containsEnv(b, marker) {
			continue
		}
		if pid, err := strconv.Atoi(strings.Split(f, "/")[2]); err == nil && pid != os.Getpid() {
			klog.Warningf("killing orphaned pod process %d", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	out, err := exec.Command("ip", "-o", "-4", "addr", "show", "dev", "lo").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "inet" && strings.HasPrefix(f[i+1], p.cfg.podSubnet) && strings.HasSuffix(f[i+1], "/32") {
				klog.Warningf("removing stale pod address %s from lo", f[i+1])
				_ = exec.Command("ip", "addr", "del", f[i+1], "dev", "lo").Run()
			}
		}
	}
}

func containsEnv(environ, prefix []byte) bool {
	for _, kv := range strings.Split(string(environ), "\x00") {
		if strings.HasPrefix(kv, string(prefix)) {
			return true
		}
	}
	return false
}

// GetPod implements node.PodLifecycleHandler.
func (p *provider) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pr, ok := p.pods[podKey(namespace, name)]
	if !ok {
		return nil, errdefs.NotFoundf("pod %s/%s not found", namespace, name)
	}
	return p.podLocked(pr), nil
}

// GetPodStatus implements node.PodLifecycleHandler.
func (p *provider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods implements node.PodLifecycleHandler.
func (p *provider) GetPods(context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(p.pods))
	for _, pr := range p.pods {
		out = append(out, p.podLocked(pr))
	}
	return out, nil
}

func (p *provider) notifyPod(pr *podRun) {
	p.mu.Lock()
	f := p.notify
	pod := p.podLocked(pr)
	// Like the kubelet tearing down a finished pod's sandbox: its address is freed (status keeps
	// it), so completed Jobs do not use up the /24.
	release := (pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed) &&
		!pr.deleted && !pr.ipReleased
	if release {
		p.releaseIPLocked(pr)
	}
	p.mu.Unlock()
	if f != nil {
		f(pod)
	}
}

// releaseIPLocked returns the pod's address to the pool and removes it from lo. Caller holds p.mu.
func (p *provider) releaseIPLocked(pr *podRun) {
	if pr.ipReleased || pr.pod.Spec.HostNetwork {
		return
	}
	pr.ipReleased = true
	if n, err := strconv.Atoi(pr.ip[strings.LastIndex(pr.ip, ".")+1:]); err == nil {
		delete(p.ips, n)
	}
	if out, err := exec.Command("ip", "addr", "del", pr.ip+"/32", "dev", "lo").CombinedOutput(); err != nil {
		klog.Warningf("pod %s: ip addr del %s: %v: %s", pr.key, pr.ip, err, out)
	}
}

// podLocked returns a copy of the pod with its current status. Caller holds p.mu.
func (p *provider) podLocked(pr *podRun) *corev1.Pod {
	pod := pr.pod.DeepCopy()
	st := corev1.PodStatus{
		HostIP:    p.cfg.nodeIP,
		HostIPs:   []corev1.HostIP{{IP: p.cfg.nodeIP}},
		PodIP:     pr.ip,
		PodIPs:    []corev1.PodIP{{IP: pr.ip}},
		StartTime: &pr.startTime,
		QOSClass:  pr.pod.Status.QOSClass,
	}
	allReady := len(pr.ctrs) > 0
	running, waiting, succeeded, failed := 0, 0, 0, 0
	for _, cr := range pr.inits {
		s := *cr.status.DeepCopy()
		if cr.sidecar() {
			s.Ready = cr.ready && s.State.Running != nil
			started := cr.started && s.State.Running != nil
			s.Started = &started
		} else {
			s.Ready = s.State.Terminated != nil && s.State.Terminated.ExitCode == 0
		}
		st.InitContainerStatuses = append(st.InitContainerStatuses, s)
	}
	for _, cr := range pr.ctrs {
		s := *cr.status.DeepCopy()
		s.Ready = cr.ready && s.State.Running != nil
		started := cr.started && s.State.Running != nil
		s.Started = &started
		allReady = allReady && s.Ready
		st.ContainerStatuses = append(st.ContainerStatuses, s)
		switch {
		case s.State.Running != nil:
			running++
		case s.State.Terminated != nil && s.State.Terminated.ExitCode == 0:
			succeeded++
		case s.State.Terminated != nil:
			failed++
		default:
			waiting++
			if s.RestartCount > 0 {
				running++ // in back-off between restarts: the kubelet reports Running
			}
		}
	}
	terminal := func() corev1.PodPhase {
		if failed > 0 {
			return corev1.PodFailed
		}
		return corev1.PodSucceeded
	}
	policy := pr.pod.Spec.RestartPolicy
	switch {
	case pr.deleted:
		st.Phase = terminal()
		allReady = false
	case pr.initFailed:
		st.Phase = corev1.PodFailed
	case !pr.initialized:
		st.Phase = corev1.PodPending
	case running > 0:
		st.Phase = corev1.PodRunning
	case waiting > 0:
		st.Phase = corev1.PodPending
	case policy == corev1.RestartPolicyNever || (policy == corev1.RestartPolicyOnFailure && failed == 0):
		st.Phase = terminal()
	default:
		st.Phase = corev1.PodRunning
	}
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
		}
		c := corev1.PodCondition{Type: t, Status: s}
		// Keep transition times stable: only a status change moves them.
		for _, old := range pr.pod.Status.Conditions {
			if old.Type == t && old.Status == s {
				c.LastTransitionTime = old.LastTransitionTime
			}
		}
		if c.LastTransitionTime.IsZero() {
			c.LastTransitionTime = metav1.Now()
		}
		return c
	}
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodReadyToStartContainers, !pr.deleted),
		cond(corev1.PodInitialized, pr.initialized),
		cond(corev1.ContainersReady, allReady),
		cond(corev1.PodReady, allReady),
		cond(corev1.PodScheduled, true),
	}
	pr.pod.Status.Conditions = st.Conditions
	pod.Status = st
	return pod
}
