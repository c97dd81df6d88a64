// Command istiod runs Istio's own discovery server (istio.io/istio/pilot/pkg/bootstrap, pinned in
// go.mod) without Kubernetes, for the end-to-end test of our WasmPlugin, EnvoyFilter and
// ServiceEntry (tests/istio).
//
// Why not the stock pilot-discovery: with `--configDir` it panics at this version (a nil
// multicluster controller reached from serviceentry.NewController when there is no Kubernetes
// client), and even without the panic it drops WasmPlugins read from files, because the
// WasmPlugin -> TrafficExtension translation is wired only for the Kubernetes config store.
// So this main does what Istio's own pilot/pkg/bootstrap/server_test.go does: NewServer with an
// empty in-memory Kubernetes client. It then adds Istio's file config store for our YAML and
// Istio's own translation controller over it. Nothing of Istio is patched.
package main

import (
	"flag"
	"log"
	"reflect"
	"sync/atomic"
	"time"
	"unsafe"

	"istio.io/istio/pilot/pkg/bootstrap"
	"istio.io/istio/pilot/pkg/config/kube/extensions"
	"istio.io/istio/pilot/pkg/config/kube/file"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/pkg/xds"
	"istio.io/istio/pkg/cmd"
	"istio.io/istio/pkg/config/constants"
	"istio.io/istio/pkg/config/schema/collections"
	kubelib "istio.io/istio/pkg/kube"
)

// laterXDS hands the translation controller's pushes to the server's XDS server, which NewServer
// creates only after the init functions have run. Changes before that need no push: the first
// push context, built at Start, reads the stores.
type laterXDS struct {
	model.XDSUpdater
	xds *atomic.Pointer[xds.DiscoveryServer]
}

func (l laterXDS) ConfigUpdate(req *model.PushRequest) {
	if x := l.xds.Load(); x != nil {
		x.ConfigUpdate(req)
	}
}

// setKubeClient sets Server.kubeClient, the one field server_test.go sets that is not exported.
func setKubeClient(s *bootstrap.Server, c kubelib.Client) {
	f := reflect.ValueOf(s).Elem().FieldByName("kubeClient")
	if !f.IsValid() || !reflect.TypeOf(c).AssignableTo(f.Type()) {
		log.Fatal("bootstrap.Server has no kubeClient field of a kube.Client type at this Istio version")
	}
	reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Set(reflect.ValueOf(c))
}

func main() {
	configDir := flag.String("configDir", "", "directory of Istio YAML (WasmPlugin, EnvoyFilter, ...)")
	meshConfig := flag.String("meshConfig", "", "MeshConfig file")
	grpcAddr := flag.String("grpcAddr", "127.0.0.1:15010", "xDS gRPC address")
	httpAddr := flag.String("httpAddr", "127.0.0.1:8080", "debug HTTP address")
	monitoringAddr := flag.String("monitoringAddr", "127.0.0.1:15014", "monitoring address")
	flag.Parse()
	if *configDir == "" {
		log.Fatal("--configDir is required")
	}

	args := bootstrap.NewPilotArgs(func(p *bootstrap.PilotArgs) {
		p.Namespace = "istio-system"
		p.MeshConfigFile = *meshConfig
		p.ServerOptions = bootstrap.DiscoveryServerOptions{
			HTTPAddr:       *httpAddr,
			GRPCAddr:       *grpcAddr,
			MonitoringAddr: *monitoringAddr,
			TLSOptions:     bootstrap.TLSOptions{TLSMinVersion: bootstrap.TLSMinVersion1_2},
		}
		p.RegistryOptions.KubeOptions.DomainSuffix = constants.DefaultClusterLocalDomain
		p.ShutdownDuration = time.Millisecond
	})
	if err := args.Complete(); err != nil {
		log.Fatal(err)
	}
	var initErr error
	var server atomic.Pointer[xds.DiscoveryServer]
	s, err := bootstrap.NewServer(args, func(s *bootstrap.Server) {
		setKubeClient(s, kubelib.NewFakeClient())
		store, err := file.NewController(*configDir, args.RegistryOptions.KubeOptions.DomainSuffix,
			collections.Pilot, args.RegistryOptions.KubeOptions)
		if err != nil {
			initErr = err
			return
		}
		translated := extensions.NewController(store, laterXDS{xds: &server}, args.KrtDebugger)
		s.ConfigStores = append(s.ConfigStores, store, translated)
	})
	if err != nil {
		log.Fatalf("bootstrap: %v", err)
	}
	if initErr != nil {
		log.Fatalf("file config store %s: %v", *configDir, initErr)
	}
	server.Store(s.XDSServer)
	stop := make(chan struct{})
	if err := s.Start(stop); err != nil {
		log.Fatalf("start: %v", err)
	}
	cmd.WaitSignal(stop)
	s.WaitUntilCompletion()
}
