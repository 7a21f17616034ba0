package main

import (
	"context"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The agent resolves env itself instead of using what virtual-kubelet hands to CreatePod: that
// was resolved before the pod had an IP, so fieldRef status.podIP (and every $(VAR) using it)
// would be empty.

// containerEnv returns the container's environment as the kubelet builds it: envFrom, then env
// in order with $(VAR) expansion, plus the service-account / apiserver variables of this node.
func (p *provider) containerEnv(ctx context.Context, pod *corev1.Pod, c *corev1.Container, podIP string) (map[string]string, error) {
	env := map[string]string{}
	for _, ef := range c.EnvFrom {
		var data map[string]string
		switch {
		case ef.ConfigMapRef != nil:
			cm, err := p.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, ef.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom configmap %s: %w", ef.ConfigMapRef.Name, err)
			}
			data = cm.Data
		case ef.SecretRef != nil:
			s, err := p.client.CoreV1().Secrets(pod.Namespace).Get(ctx, ef.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if ef.SecretRef.Optional != nil && *ef.SecretRef.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom secret %s: %w", ef.SecretRef.Name, err)
			}
			data = map[string]string{}
			for k, v := range s.Data {
				data[k] = string(v)
			}
		}
		for k, v := range data {
			env[ef.Prefix+k] = v
		}
	}
	// Like the kubelet: these are defined before the container's own env, which may override.
	env["KUBERNETES_SERVICE_HOST"] = p.cfg.apiHost
	env["KUBERNETES_SERVICE_PORT"] = p.cfg.apiPort
	env["KUBERNETES_SERVICE_PORT_HTTPS"] = p.cfg.apiPort
	if _, ok := env["POD_IP"]; !ok {
		env["POD_IP"] = podIP
	}
	if _, ok := env["HOSTNAME"]; !ok {
		env["HOSTNAME"] = pod.Name
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = expand(e.Value, lookup)
			continue
		}
		v, skip, err := p.envValueFrom(ctx, pod, c, e.ValueFrom, podIP)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		if !skip {
			env[e.Name] = v
		}
	}
	return env, nil
}

func (p *provider) envValueFrom(ctx context.Context, pod *corev1.Pod, c *corev1.Container, vf *corev1.EnvVarSource, podIP string) (string, bool, error) {
	switch {
	case vf.FieldRef != nil:
		v, err := p.fieldValue(pod, vf.FieldRef.FieldPath, podIP)
		return v, false, err
	case vf.ConfigMapKeyRef != nil:
		r := vf.ConfigMapKeyRef
		optional := r.Optional != nil && *r.Optional
		cm, err := p.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
		if err != nil {
			return "", optional, ignoreIf(optional, fmt.Errorf("configmap %s: %w", r.Name, err))
		}
		v, ok := cm.Data[r.Key]
		if !ok {
			return "", optional, ignoreIf(optional, fmt.Errorf("configmap %s has no key %s", r.Name, r.Key))
		}
		return v, false, nil
	case vf.SecretKeyRef != nil:
		r := vf.SecretKeyRef
		optional := r.Optional != nil && *r.Optional
		s, err := p.client.CoreV1().Secrets(pod.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
		if err != nil {
			return "", optional, ignoreIf(optional, fmt.Errorf("secret %s: %w", r.Name, err))
		}
		v, ok := s.Data[r.Key]
		if !ok {
			return "", optional, ignoreIf(optional, fmt.Errorf("secret %s has no key %s", r.Name, r.Key))
		}
		return string(v), false, nil
	case vf.ResourceFieldRef != nil:
		return resourceValue(c, vf.ResourceFieldRef), false, nil
	}
	return "", true, nil
}

func ignoreIf(optional bool, err error) error {
	if optional {
		return nil
	}
	return err
}

// fieldValue implements the downward API field paths the kubelet supports.
func (p *provider) fieldValue(pod *corev1.Pod, path, podIP string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "metadata.labels":
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		return formatMap(pod.Annotations), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP", "status.hostIPs":
		return p.cfg.nodeIP, nil
	case "status.podIP", "status.podIPs":
		return podIP, nil
	}
	for prefix, m := range map[string]map[string]string{"metadata.labels": pod.Labels, "metadata.annotations": pod.Annotations} {
		if strings.HasPrefix(path, prefix+"['") && strings.HasSuffix(path, "']") {
			return m[path[len(prefix)+2:len(path)-2]], nil
		}
	}
	return "", fmt.Errorf("unsupported fieldRef %q", path)
}

func formatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%q\n", k, m[k])
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// resourceValue: limits (else requests) of the container, in the divisor's unit (default 1).
func resourceValue(c *corev1.Container, r *corev1.ResourceFieldSelector) string {
	parts := strings.SplitN(r.Resource, ".", 2)
	if len(parts) != 2 {
		return ""
	}
	list := c.Resources.Limits
	if parts[0] == "requests" {
		list = c.Resources.Requests
	}
	q, ok := list[corev1.ResourceName(parts[1])]
	if !ok {
		return "0"
	}
	div := r.Divisor
	if div.IsZero() {
		if parts[1] == "cpu" {
			return fmt.Sprint((q.MilliValue() + 999) / 1000)
		}
		return fmt.Sprint(q.Value())
	}
	return fmt.Sprint((q.MilliValue() + div.MilliValue() - 1) / div.MilliValue())
}

// expand is the kubelet's $(VAR) expansion: $(NAME) becomes the value of NAME when defined and
// stays literal otherwise; $$ escapes a $.
func expand(s string, lookup func(string) (string, bool)) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := lookup(name); ok {
				b.WriteString(v)
			} else {
				b.WriteString("$(" + name + ")")
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}
