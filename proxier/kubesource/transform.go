package kubesource

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/proxier"
)

// Transform is the sources' transform: it strips, in place, every field
// the proxy does not read from Services, EndpointSlices and Nodes before
// they reach the sink (or, for the Node, the informer cache). Other objects
// pass unchanged.
//
// Kept: a Service's spec, status.loadBalancer and the
// proxier.SchedulerAnnotation; an EndpointSlice's ports, addressType, the
// kubernetes.io/service-name label, the last-change-trigger-time annotation
// and per endpoint its first address, conditions, node, zone and zone hints;
// a Node's labels, taints, deletion timestamp and addresses.
func Transform(obj any) (any, error) {
	switch o := obj.(type) {
	case *v1.Service:
		trimMeta(&o.ObjectMeta, nil, proxier.SchedulerAnnotation)
		o.Spec.Selector = nil
		o.Status.Conditions = nil
	case *discovery.EndpointSlice:
		trimMeta(&o.ObjectMeta, []string{discovery.LabelServiceName}, v1.EndpointsLastChangeTriggerTime)
		for i := range o.Endpoints {
			ep := &o.Endpoints[i]
			ep.TargetRef = nil
			ep.Hostname = nil
			ep.DeprecatedTopology = nil
			if len(ep.Addresses) > 1 {
				ep.Addresses = ep.Addresses[:1] // the proxy uses the first only
			}
			if ep.Hints != nil {
				ep.Hints.ForNodes = nil
			}
		}
	case *v1.Node:
		labels := o.Labels
		trimMeta(&o.ObjectMeta, nil)
		o.Labels = labels // zone and region labels; few and small
		o.Spec = v1.NodeSpec{Taints: o.Spec.Taints}
		o.Status = v1.NodeStatus{Addresses: o.Status.Addresses}
	}
	return obj, nil
}

// trimMeta drops managed fields, owner references, finalizers, and every
// label and annotation not listed.
func trimMeta(m *metav1.ObjectMeta, keepLabels []string, keepAnnotations ...string) {
	m.ManagedFields = nil
	m.OwnerReferences = nil
	m.Finalizers = nil
	m.GenerateName = ""
	m.Labels = keep(m.Labels, keepLabels)
	m.Annotations = keep(m.Annotations, keepAnnotations)
}

// keep returns the entries of in whose keys are listed, or nil if none.
func keep(in map[string]string, keys []string) map[string]string {
	var out map[string]string
	for _, k := range keys {
		if v, ok := in[k]; ok {
			if out == nil {
				out = make(map[string]string, len(keys))
			}
			out[k] = v
		}
	}
	return out
}
