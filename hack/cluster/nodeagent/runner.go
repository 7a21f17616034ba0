package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
)

// sidecar: an init container with restartPolicy Always (Kubernetes native sidecar).
func (cr *ctrRun) sidecar() bool {
	return cr.init && cr.c.RestartPolicy != nil && *cr.c.RestartPolicy == corev1.ContainerRestartPolicyAlways
}

// errImage marks a container whose image has no (built) binary: reported as ErrImagePull.
type errImage struct{ error }

// runPod sets the pod up (retrying while config is missing: a ConfigMap created later, a binary
// built later), runs the init containers in order, then the containers.
func (p *provider) runPod(pr *podRun) {
	lastErr := ""
	for {
		err := p.setupPod(pr)
		if err == nil {
			break
		}
		reason := "CreateContainerConfigError"
		var ie errImage
		if errors.As(err, &ie) {
			reason = "ErrImagePull"
		}
		if err.Error() != lastErr {
			klog.Warningf("pod %s: %s: %v (retrying every 5 s)", pr.key, reason, err)
			p.events.Event(pr.pod, corev1.EventTypeWarning, "Failed", reason+": "+err.Error())
			lastErr = err.Error()
		}
		p.mu.Lock()
		for _, cr := range append(append([]*ctrRun{}, pr.inits...), pr.ctrs...) {
			cr.status.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: err.Error()}}
		}
		p.mu.Unlock()
		p.notifyPod(pr)
		select {
		case <-pr.ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
	go p.refreshLoop(pr)
	for _, cr := range pr.inits {
		if cr.sidecar() { // runs beside the rest of the pod, restarted always
			go p.runContainer(pr, cr)
			continue
		}
		if !p.runContainer(pr, cr) {
			p.mu.Lock()
			if pr.ctx.Err() == nil {
				pr.initFailed = true
			}
			p.mu.Unlock()
			p.notifyPod(pr)
			return
		}
	}
	p.mu.Lock()
	pr.initialized = true
	p.mu.Unlock()
	p.notifyPod(pr)
	for _, cr := range pr.ctrs {
		go p.runContainer(pr, cr)
	}
}

// refreshLoop rewrites ConfigMap/Secret/downward API volumes every minute and the service-account
// tokens (valid 1 h) every 20 minutes, so long-running pods keep working credentials.
func (p *provider) refreshLoop(pr *podRun) {
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-pr.ctx.Done():
			return
		case <-tick.C:
		}
		tokens := n%20 == 0
		if _, err := p.prepareVolumes(pr.ctx, pr.pod, pr.dir, tokens); err != nil && pr.ctx.Err() == nil {
			klog.Warningf("pod %s: refreshing volumes: %v", pr.key, err)
		}
		if tokens && (pr.pod.Spec.AutomountServiceAccountToken == nil || *pr.pod.Spec.AutomountServiceAccountToken) {
			if _, err := p.writeServiceAccount(pr.ctx, pr.pod, pr.dir); err != nil && pr.ctx.Err() == nil {
				klog.Warningf("pod %s: refreshing the service-account token: %v", pr.key, err)
			}
		}
	}
}

// setupPod writes volumes and service-account files and resolves every container's command,
// environment and mounts into its shim spec.
func (p *provider) setupPod(pr *podRun) error {
	pod := pr.pod
	if err := os.MkdirAll(pr.logDir, 0o755); err != nil {
		return err
	}
	// Image errors first: they are the most common, and need no API calls.
	all := append(append([]*ctrRun{}, pr.inits...), pr.ctrs...)
	entries := make([]*imageEntry, len(all))
	// Read per pod, so edits of the mapping apply without restarting the agent.
	images, err := loadImages(p.cfg.imagesFile, p.cfg.repoDir, p.cfg.targetDir, p.cfg.imageVars)
	if err != nil {
		return errImage{err}
	}
	for i, cr := range all {
		e, err := images.lookup(cr.c.Image)
		if err != nil {
			return errImage{err}
		}
		entries[i] = e
	}
	vols, err := p.prepareVolumes(pr.ctx, pod, pr.dir, true)
	if err != nil {
		return err
	}
	kubeconfig := ""
	if pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken {
		if kubeconfig, err = p.writeServiceAccount(pr.ctx, pod, pr.dir); err != nil {
			return err
		}
	}
	for i, cr := range all {
		env, err := p.containerEnv(pr.ctx, pod, &cr.c, pr.ip)
		if err != nil {
			return fmt.Errorf("container %s: %w", cr.c.Name, err)
		}
		if _, ok := env["KUBECONFIG"]; !ok && kubeconfig != "" {
			env["KUBECONFIG"] = kubeconfig
		}
		env[markerEnv] = p.cfg.nodeName + "/" + string(pod.UID)
		if _, ok := env["PATH"]; !ok {
			env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
		}
		spec, err := p.containerSpec(&cr.c, entries[i], env, vols)
		if err != nil {
			return fmt.Errorf("container %s: %w", cr.c.Name, err)
		}
		p.mu.Lock()
		cr.spec = spec
		p.mu.Unlock()
	}
	return nil
}

func (p *provider) containerSpec(c *corev1.Container, e *imageEntry, env map[string]string, vols map[string]string) (*shimSpec, error) {
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	var argv []string
	switch {
	case len(c.Command) > 0:
		argv = append(argv, c.Command...)
		argv = append(argv, c.Args...)
	case e.Host:
		return nil, fmt.Errorf("image %s runs host commands: the container needs a command", c.Image)
	case len(c.Args) > 0:
		argv = append([]string{e.Binary}, c.Args...)
	default:
		argv = append([]string{e.Binary}, e.Args...)
	}
	for i := range argv {
		argv[i] = expand(argv[i], lookup)
	}
	path := argv[0]
	// The image's own binary may be named by its in-image path (/usr/local/bin/kartflow-worker).
	if !e.Host && filepath.Base(path) == filepath.Base(e.Binary) {
		path = e.Binary
	} else if filepath.Base(path) == path {
		lp, err := exec.LookPath(path)
		if err != nil {
			return nil, fmt.Errorf("command %q not found on the host", path)
		}
		path = lp
	}
	s := &shimSpec{Path: path, Args: argv, Dir: c.WorkingDir}
	if s.Dir == "" {
		s.Dir = "/"
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s.Env = append(s.Env, k+"="+env[k])
	}
	for _, m := range c.VolumeMounts {
		src, ok := vols[m.Name]
		if !ok {
			return nil, fmt.Errorf("volumeMount %s: no volume of that name", m.Name)
		}
		if m.SubPath != "" {
			src = filepath.Join(src, expand(m.SubPath, lookup))
		}
		s.Mounts = append(s.Mounts, shimMount{Src: src, Dst: m.MountPath, ReadOnly: m.ReadOnly})
	}
	return s, nil
}

// shimCmd builds the command that runs spec (with argv replaced by cmd when set, for exec probes)
// in its own mount namespace and process group; it dies with the agent (Pdeathsig).
func (p *provider) shimCmd(pr *podRun, name string, spec *shimSpec, cmd []string) (*exec.Cmd, error) {
	s := *spec
	if cmd != nil {
		lp := cmd[0]
		if filepath.Base(lp) == lp {
			var err error
			if lp, err = exec.LookPath(lp); err != nil {
				return nil, err
			}
		}
		s.Path, s.Args = lp, cmd
	}
	raw, err := json.Marshal(&s)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(pr.dir, 0o755); err != nil {
		return nil, err
	}
	// One file per start (probes and hooks may run concurrently); the shim deletes it.
	tf, err := os.CreateTemp(pr.dir, name+".*.shim.json")
	if err != nil {
		return nil, err
	}
	f := tf.Name()
	_, err = tf.Write(raw)
	if cerr := tf.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f)
		return nil, err
	}
	c := exec.Command("/proc/self/exe", "shim", f)
	c.Env = []string{markerEnv + "=" + p.cfg.nodeName + "/" + string(pr.pod.UID)}
	c.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:      true,
		Pdeathsig:    syscall.SIGKILL,
		Unshareflags: syscall.CLONE_NEWNS,
	}
	return c, nil
}

// runContainer runs one container until the pod stops, restarting it per restartPolicy with
// back-off. For init containers it returns whether the container finally succeeded.
func (p *provider) runContainer(pr *podRun, cr *ctrRun) bool {
	policy := pr.pod.Spec.RestartPolicy
	switch {
	case cr.sidecar():
		policy = corev1.RestartPolicyAlways
	case cr.init && policy == corev1.RestartPolicyAlways:
		policy = corev1.RestartPolicyOnFailure // init containers run to completion
	}
	crashes := 0
	logPath := filepath.Join(pr.logDir, cr.c.Name+".log")
	for {
		if pr.ctx.Err() != nil {
			return false
		}
		// kubectl logs --previous reads the last run's log.
		if _, err := os.Stat(logPath); err == nil {
			_ = os.Rename(logPath, logPath+".previous")
		}
		code, reason, msg, ran := p.runOnce(pr, cr, logPath)
		if pr.ctx.Err() != nil {
			return false
		}
		if code == 0 && cr.init && !cr.sidecar() {
			return true
		}
		restart := policy == corev1.RestartPolicyAlways || (policy == corev1.RestartPolicyOnFailure && code != 0)
		if !restart {
			klog.Infof("pod %s: container %s exited %d (%s), not restarting", pr.key, cr.c.Name, code, reason)
			return code == 0
		}
		if ran > 2*p.cfg.backoffMax {
			crashes = 0
		}
		delay := p.cfg.backoffBase << min(crashes, 20)
		if delay > p.cfg.backoffMax || delay <= 0 {
			delay = p.cfg.backoffMax
		}
		crashes++
		klog.Infof("pod %s: container %s exited %d (%s %s), restarting in %v", pr.key, cr.c.Name, code, reason, msg, delay)
		p.mu.Lock()
		cr.status.LastTerminationState = cr.status.State
		cr.status.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{
			Reason:  "CrashLoopBackOff",
			Message: fmt.Sprintf("back-off %v restarting failed container=%s pod=%s", delay, cr.c.Name, pr.pod.Name),
		}}
		p.mu.Unlock()
		p.notifyPod(pr)
		p.events.Eventf(pr.pod, corev1.EventTypeWarning, "BackOff", "Back-off %v restarting container %s (exit code %d)", delay, cr.c.Name, code)
		select {
		case <-pr.ctx.Done():
			return false
		case <-time.After(delay):
		}
		p.mu.Lock()
		cr.status.RestartCount++
		p.mu.Unlock()
	}
}

// runOnce starts the container's process, runs its probes and waits for it to exit.
func (p *provider) runOnce(pr *podRun, cr *ctrRun, logPath string) (code int32, reason, msg string, ran time.Duration) {
	p.mu.Lock()
	spec := cr.spec
	p.mu.Unlock()
	fail := func(err error) (int32, string, string, time.Duration) {
		now := metav1.Now()
		p.mu.Lock()
		cr.status.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: 128, Reason: "StartError", Message: err.Error(), StartedAt: now, FinishedAt: now}}
		p.mu.Unlock()
		p.notifyPod(pr)
		return 128, "StartError", err.Error(), 0
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fail(err)
	}
	defer logf.Close()
	if err := p.ensureMountPoints(pr, spec); err != nil {
		return fail(err)
	}
	cmd, err := p.shimCmd(pr, cr.c.Name, spec, nil)
	if err != nil {
		return fail(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	p.mu.Lock()
	if pr.ctx.Err() != nil { // deleted meanwhile: do not start
		p.mu.Unlock()
		return 137, "Error", "", 0
	}
	if err := startPinned(cmd); err != nil {
		p.mu.Unlock()
		return fail(err)
	}
	started := metav1.Now()
	cr.pid = cmd.Process.Pid
	cr.exited = make(chan struct{})
	cr.ready = cr.c.ReadinessProbe == nil
	cr.started = cr.c.StartupProbe == nil
	cr.killReason = ""
	cr.status.State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: started}}
	cr.status.ContainerID = fmt.Sprintf("process://%d", cr.pid)
	exited := cr.exited
	p.mu.Unlock()
	klog.Infof("pod %s: container %s started (pid %d): %v", pr.key, cr.c.Name, cmd.Process.Pid, spec.Args)
	p.events.Eventf(pr.pod, corev1.EventTypeNormal, "Started", "Started container %s (pid %d)", cr.c.Name, cmd.Process.Pid)
	p.notifyPod(pr)

	probeCtx, stopProbes := context.WithCancel(pr.ctx)
	if !cr.init || cr.sidecar() {
		go p.probeLoop(probeCtx, pr, cr, cmd.Process.Pid)
	}
	werr := cmd.Wait()
	stopProbes()
	code, reason = 0, "Completed"
	if ee := (*exec.ExitError)(nil); errors.As(werr, &ee) {
		ws := ee.Sys().(syscall.WaitStatus)
		reason = "Error"
		if ws.Signaled() {
			code = 128 + int32(ws.Signal())
		} else {
			code = int32(ws.ExitStatus())
		}
	} else if werr != nil {
		code, reason, msg = 128, "Error", werr.Error()
	}
	if msg == "" && code != 0 && cr.c.TerminationMessagePolicy == corev1.TerminationMessageFallbackToLogsOnError {
		msg = logTail(logPath, terminationMessageLines, terminationMessageBytes)
	}
	p.mu.Lock()
	if cr.killReason != "" {
		msg = cr.killReason
	}
	cr.pid = 0
	cr.ready = false
	cr.status.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: code, Reason: reason, Message: msg, StartedAt: started, FinishedAt: metav1.Now(),
		ContainerID: cr.status.ContainerID}}
	close(exited)
	p.mu.Unlock()
	p.notifyPod(pr)
	return code, reason, msg, time.Since(started.Time)
}

// killContainer stops the current process of cr (liveness/startup failure): SIGTERM, then SIGKILL
// after the pod's grace period.
func (p *provider) killContainer(pr *podRun, cr *ctrRun, why string) {
	p.mu.Lock()
	pid, exited := cr.pid, cr.exited
	cr.killReason = why
	p.mu.Unlock()
	if pid == 0 {
		return
	}
	klog.Infof("pod %s: container %s: %s, killing it", pr.key, cr.c.Name, why)
	p.events.Eventf(pr.pod, corev1.EventTypeNormal, "Killing", "Stopping container %s: %s", cr.c.Name, why)
	grace := 30 * time.Second
	if g := pr.pod.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	end := time.Now().Add(grace)
	p.preStop(pr, cr, end)
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(time.Until(end)):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// preStop runs the container's preStop hook (exec, httpGet, tcpSocket or sleep), bounded by the
// grace period's end, before the container gets SIGTERM.
func (p *provider) preStop(pr *podRun, cr *ctrRun, end time.Time) {
	if cr.c.Lifecycle == nil || cr.c.Lifecycle.PreStop == nil {
		return
	}
	h := cr.c.Lifecycle.PreStop
	ctx, cancel := context.WithDeadline(context.Background(), end)
	defer cancel()
	if h.Sleep != nil {
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(h.Sleep.Seconds) * time.Second):
		}
		return
	}
	pb := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: h.Exec, HTTPGet: h.HTTPGet, TCPSocket: h.TCPSocket}}
	if err := p.probeOnce(ctx, pr, cr, pb, time.Until(end)); err != nil {
		p.events.Eventf(pr.pod, corev1.EventTypeWarning, "FailedPreStopHook", "preStop hook of container %s failed: %v", cr.c.Name, err)
	}
}
