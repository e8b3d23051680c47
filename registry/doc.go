// Package registry is Butterfly's etcd key schema and the lease-based
// registration of a server under a stable instance name.
//
// An instance lives at <prefix>/services/<service>/<instance> as JSON
// {"Addr":"host:port","Metadata":{...}} on a lease. The key is the identity;
// the address is only where the instance lives now. Each incarnation raises
// Metadata.epoch, so a process whose key was taken over (a host move) learns
// it through Replaced and stops touching the key. Operators write commands
// such as {"drain":true} to <prefix>/control/<service>/<instance>.
//
// A server registers itself and leaves on shutdown:
//
//	reg, err := registry.Register(ctx, cli, "intermediate", "im-1", "10.0.0.7:7400",
//		registry.WithTTL(5*time.Second), registry.WithLogger(logger))
//	if err != nil {
//		return err
//	}
//	defer reg.Close(ctx)
//	select {
//	case <-reg.DrainRequested(): // butterfly drain im-1
//		reg.SetDraining(ctx)
//	case <-reg.Replaced(): // moved: another process holds the key now
//	}
//
// A client follows the membership of a service:
//
//	err := registry.Watch(ctx, cli, "intermediate", func(v registry.View) {
//		for _, inst := range v.Instances {
//			fmt.Println(inst.Name, inst.Addr, inst.Metadata.Epoch, inst.Metadata.Draining)
//		}
//	})
//
// The etcd client should reconnect well within the lease TTL after an etcd
// outage (grpc.WithConnectParams in clientv3.Config.DialOptions), so that a
// lease that outlived the outage is replaced before it expires.
package registry
