package main

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	corev1informers "k8s.io/client-go/informers/core/v1"
	corev1listers "k8s.io/client-go/listers/core/v1"
)

// virtual-kubelet resolves container env before calling CreatePod and refuses field paths it
// does not know (status.podIP) or objects that do not exist yet, so the pod would never reach
// the provider. The agent resolves env itself (env.go), so virtual-kubelet gets pods with the
// env sources blanked out through this informer wrapper.
type envlessPodInformer struct{ corev1informers.PodInformer }

func (i envlessPodInformer) Lister() corev1listers.PodLister {
	return envlessLister{i.PodInformer.Lister()}
}

type envlessLister struct{ corev1listers.PodLister }

func (l envlessLister) List(sel labels.Selector) ([]*corev1.Pod, error) {
	return blankAll(l.PodLister.List(sel))
}

func (l envlessLister) Pods(ns string) corev1listers.PodNamespaceLister {
	return envlessNsLister{l.PodLister.Pods(ns)}
}

type envlessNsLister struct {
	corev1listers.PodNamespaceLister
}

func (l envlessNsLister) List(sel labels.Selector) ([]*corev1.Pod, error) {
	return blankAll(l.PodNamespaceLister.List(sel))
}

func (l envlessNsLister) Get(name string) (*corev1.Pod, error) {
	pod, err := l.PodNamespaceLister.Get(name)
	if err != nil {
		return nil, err
	}
	return blankEnv(pod), nil
}

func blankAll(pods []*corev1.Pod, err error) ([]*corev1.Pod, error) {
	for i := range pods {
		pods[i] = blankEnv(pods[i])
	}
	return pods, err
}

// blankEnv returns pod, or a copy without envFrom and with valueFrom replaced by "".
func blankEnv(pod *corev1.Pod) *corev1.Pod {
	needs := false
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			needs = needs || len(c.EnvFrom) > 0
			for _, e := range c.Env {
				needs = needs || e.ValueFrom != nil
			}
		}
	}
	if !needs {
		return pod
	}
	pod = pod.DeepCopy()
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			cs[i].EnvFrom = nil
			for j := range cs[i].Env {
				cs[i].Env[j].ValueFrom = nil
			}
		}
	}
	return pod
}
