// Command parity-oracle answers routing and balancing questions with polaris-go, against a real
// Polaris server, one JSON question per line on stdin and one JSON answer per line on stdout.
//
// The parity suite (tests/parity) asks the real Envoy running polaris-wasm the same questions and
// compares. One process answers every question of a session: each named profile (location,
// nearby levels, ringHash vnodes, rule failover) is one polaris-go SDK context, created on its
// first question, configured by a generated polaris.yaml (written next to the logs for reading).
//
// Questions ({"id": n, "op": ...}):
//
//	{"op": "profile", "name": "main", "config": {"location": {...}, "nearby": {...}, "vnodes": 10, "failover": "all"}}
//	{"op": "instances", "profile": "main", "service": "s", "namespace": "default"}
//	    -> {"revision", "instances": [{"id", "address", "healthy", "isolate", "weight", "metadata", "location"}]}
//	{"op": "revisions", "profile": "main", "service": "s", "namespace": "default", "caller": {...}}
//	    -> {"instances_revision", "routing_revision", "caller_routing_revision", "routing_error"}
//	{"op": "route", "profile": "main", "service": "s", "namespace": "default", "caller": {...},
//	 "variables": {...}, "request": {"headers", "query", "cookies", "method", "path", "caller_ip"}, "samples": 64}
//	    -> {"instances": ["ip:port", ...]} the union over `samples` ProcessRouters calls (a rule's
//	       weighted groups are picked at random per call), or {"error": "..."}
//	{"op": "balance", ... as route ..., "policy": "ringHash", "hash_keys": ["k1", ...]}
//	    -> {"picks": {"k1": "ip:port", ...}}: ProcessRouters once, then ProcessLoadBalance with
//	       HashKey per key on the routed instances; for "hash", also "edge_keys" (see hashEdgeKeys)
//
// Every route and balance answer is computed twice. "instances"/"picks" come from a fresh
// ServiceInstances built from GetAllInstances' answer, so no cache of an earlier question (such as
// polaris-go's NOT_EQUALS metadata cache, keyed without the compared value) leaks into this one:
// what a fresh polaris-go process answers. "cached_instances"/"cached_picks" come from the SDK's own
// cached answer, what a long-running caller gets; the suite reports where the two differ.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/polarismesh/polaris-go"
	"github.com/polarismesh/polaris-go/api"
	"github.com/polarismesh/polaris-go/pkg/algorithm/hash"
	"github.com/polarismesh/polaris-go/pkg/config"
	"github.com/polarismesh/polaris-go/pkg/model"
	"github.com/polarismesh/polaris-go/pkg/plugin/loadbalancer"
	lbcommon "github.com/polarismesh/polaris-go/plugin/loadbalancer/common"
)

// Location is an SDK location (global.location, provider `local`).
type Location struct {
	Region string `json:"region"`
	Zone   string `json:"zone"`
	Campus string `json:"campus"`
}

// Nearby is nearbyBasedRouter's configuration, in the filter's words.
type Nearby struct {
	MatchLevel       string `json:"match_level"`
	MaxMatchLevel    string `json:"max_match_level"`
	UnhealthyPercent int    `json:"unhealthy_percent"`
}

// Profile is one SDK configuration.
type Profile struct {
	Location *Location `json:"location,omitempty"`
	Nearby   *Nearby   `json:"nearby,omitempty"`
	// ringHash vnodeCount; 0 keeps polaris-go's default.
	Vnodes int `json:"vnodes,omitempty"`
	// ruleBasedRouter failoverType: "all" (default) or "none".
	Failover string `json:"failover,omitempty"`
}

// Caller is the calling service (ProcessRoutersRequest.SourceService).
type Caller struct {
	Service   string            `json:"service"`
	Namespace string            `json:"namespace"`
	Metadata  map[string]string `json:"metadata"`
}

// Request holds the request facts, passed as routing arguments.
type Request struct {
	Headers  map[string]string `json:"headers"`
	Query    map[string]string `json:"query"`
	Cookies  map[string]string `json:"cookies"`
	Method   string            `json:"method"`
	Path     string            `json:"path"`
	CallerIP string            `json:"caller_ip"`
}

// Question is one line of input.
type Question struct {
	ID        int64             `json:"id"`
	Op        string            `json:"op"`
	Name      string            `json:"name"`
	Config    *Profile          `json:"config"`
	Profile   string            `json:"profile"`
	Service   string            `json:"service"`
	Namespace string            `json:"namespace"`
	Caller    *Caller           `json:"caller"`
	Variables map[string]string `json:"variables"`
	Request   Request           `json:"request"`
	Samples   int               `json:"samples"`
	Policy    string            `json:"policy"`
	HashKeys  []string          `json:"hash_keys"`
}

// InstanceView is an instance as polaris-go sees it.
type InstanceView struct {
	ID       string            `json:"id"`
	Address  string            `json:"address"`
	Healthy  bool              `json:"healthy"`
	Isolate  bool              `json:"isolate"`
	Weight   int               `json:"weight"`
	Metadata map[string]string `json:"metadata"`
	Location Location          `json:"location"`
}

// Answer is one line of output.
type Answer struct {
	ID                    int64             `json:"id"`
	Error                 string            `json:"error,omitempty"`
	Instances             []string          `json:"instances"`
	CachedInstances       []string          `json:"cached_instances,omitempty"`
	CachedError           string            `json:"cached_error,omitempty"`
	Picks                 map[string]string `json:"picks,omitempty"`
	CachedPicks           map[string]string `json:"cached_picks,omitempty"`
	EdgeKeys              []string          `json:"edge_keys,omitempty"`
	Revision              string            `json:"revision,omitempty"`
	All                   []InstanceView    `json:"all,omitempty"`
	InstancesRevision     string            `json:"instances_revision,omitempty"`
	RoutingRevision       string            `json:"routing_revision,omitempty"`
	CallerRoutingRevision string            `json:"caller_routing_revision,omitempty"`
	RoutingError          string            `json:"routing_error,omitempty"`
	Millis                int64             `json:"ms"`
}

type sdk struct {
	ctx      api.SDKContext
	consumer polaris.ConsumerAPI
	router   polaris.RouterAPI
	system   config.SystemConfig
	vars     map[string]bool
}

type oracle struct {
	server   string
	workdir  string
	profiles map[string]*Profile
	sdks     map[string]*sdk
}

func (o *oracle) yaml(name string, p *Profile) string {
	var b strings.Builder
	fmt.Fprintf(&b, "global:\n")
	fmt.Fprintf(&b, "  serverConnector:\n    addresses:\n      - %s\n    connectTimeout: 1s\n", o.server)
	fmt.Fprintf(&b, "  api:\n    timeout: 2s\n    maxRetryTimes: 2\n    retryInterval: 1s\n")
	fmt.Fprintf(&b, "  statReporter:\n    enable: false\n")
	if p.Location != nil {
		fmt.Fprintf(&b, "  location:\n    providers:\n      - type: local\n        options:\n")
		fmt.Fprintf(&b, "          region: %q\n          zone: %q\n          campus: %q\n",
			p.Location.Region, p.Location.Zone, p.Location.Campus)
	}
	fmt.Fprintf(&b, "consumer:\n")
	fmt.Fprintf(&b, "  localCache:\n    serviceRefreshInterval: 1s\n    persistEnable: false\n")
	fmt.Fprintf(&b, "    startUseFileCache: false\n    persistDir: %q\n", filepath.Join(o.workdir, name, "backup"))
	fmt.Fprintf(&b, "  serviceRouter:\n    chain:\n      - ruleBasedRouter\n      - nearbyBasedRouter\n")
	fmt.Fprintf(&b, "    afterChain:\n      - filterOnlyRouter\n")
	fmt.Fprintf(&b, "    enableRecoverAll: true\n    percentOfMinInstances: 0\n")
	fmt.Fprintf(&b, "    plugin:\n")
	failover := p.Failover
	if failover == "" {
		failover = "all"
	}
	fmt.Fprintf(&b, "      ruleBasedRouter:\n        failoverType: %s\n", failover)
	n := p.Nearby
	if n == nil {
		n = &Nearby{}
	}
	match, max, pct := n.MatchLevel, n.MaxMatchLevel, n.UnhealthyPercent
	if match == "" {
		match = "zone"
	}
	if max == "all" {
		max = "" // polaris-go spells the widest level as the empty string (config.AllLevel)
	}
	if pct == 0 {
		pct = 100
	}
	fmt.Fprintf(&b, "      nearbyBasedRouter:\n        matchLevel: %s\n        maxMatchLevel: %q\n", match, max)
	fmt.Fprintf(&b, "        enableDegradeByUnhealthyPercent: true\n        unhealthyPercentToDegrade: %d\n", pct)
	fmt.Fprintf(&b, "  loadbalancer:\n    type: weightedRandom\n")
	if p.Vnodes > 0 {
		fmt.Fprintf(&b, "    plugin:\n      ringHash:\n        vnodeCount: %d\n", p.Vnodes)
	}
	fmt.Fprintf(&b, "  circuitBreaker:\n    enable: false\n")
	return b.String()
}

func (o *oracle) sdkFor(name string) (*sdk, error) {
	if s, ok := o.sdks[name]; ok {
		return s, nil
	}
	p, ok := o.profiles[name]
	if !ok {
		return nil, fmt.Errorf("unknown profile %q", name)
	}
	text := o.yaml(name, p)
	dir := filepath.Join(o.workdir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "polaris.yaml"), []byte(text), 0o644); err != nil {
		return nil, err
	}
	cfg, err := config.LoadConfiguration([]byte(text))
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", name, err)
	}
	ctx, err := polaris.NewSDKContextByConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", name, err)
	}
	if p.Location != nil {
		// The location provider fills the location asynchronously; nearby routing is off until then.
		deadline := time.Now().Add(10 * time.Second)
		for ctx.GetValueContext().GetCurrentLocation().GetLocation() == nil {
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("profile %s: location not ready in 10s", name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	s := &sdk{
		ctx:      ctx,
		consumer: polaris.NewConsumerAPIByContext(ctx),
		router:   polaris.NewRouterAPIByContext(ctx),
		system:   ctx.GetConfig().GetGlobal().GetSystem(),
		vars:     map[string]bool{},
	}
	o.sdks[name] = s
	return s, nil
}

func address(inst model.Instance) string {
	return fmt.Sprintf("%s:%d", inst.GetHost(), inst.GetPort())
}

func sortedSet(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func (s *sdk) all(q *Question) (*model.InstancesResponse, error) {
	req := &polaris.GetAllInstancesRequest{}
	req.Service = q.Service
	req.Namespace = q.Namespace
	return s.consumer.GetAllInstances(req)
}

// setVariables makes q.Variables the SDK's system variables (the source of VARIABLE values).
func (s *sdk) setVariables(vars map[string]string) {
	for k := range s.vars {
		if _, keep := vars[k]; !keep {
			s.system.UnsetVariable(k)
			delete(s.vars, k)
		}
	}
	for k, v := range vars {
		s.system.SetVariable(k, v)
		s.vars[k] = true
	}
}

func arguments(r *Request) []model.Argument {
	var args []model.Argument
	for k, v := range r.Headers {
		args = append(args, model.BuildHeaderArgument(strings.ToLower(k), v))
	}
	for k, v := range r.Query {
		args = append(args, model.BuildQueryArgument(k, v))
	}
	for k, v := range r.Cookies {
		args = append(args, model.BuildCookieArgument(k, v))
	}
	if r.Method != "" {
		args = append(args, model.BuildMethodArgument(r.Method))
	}
	if r.Path != "" {
		args = append(args, model.BuildPathArgument(r.Path))
	}
	if r.CallerIP != "" {
		args = append(args, model.BuildCallerIPArgument(r.CallerIP))
	}
	return args
}

// routeOnce is one ProcessRouters call for q over dst.
func (s *sdk) routeOnce(q *Question, dst model.ServiceInstances) (*model.InstancesResponse, error) {
	req := &polaris.ProcessRoutersRequest{}
	req.DstInstances = dst
	if q.Caller != nil {
		meta := make(map[string]string, len(q.Caller.Metadata))
		for k, v := range q.Caller.Metadata {
			meta[k] = v
		}
		req.SourceService = model.ServiceInfo{
			Service: q.Caller.Service, Namespace: q.Caller.Namespace, Metadata: meta,
		}
	}
	req.Arguments = arguments(&q.Request)
	return s.router.ProcessRouters(req)
}

// fresh is a ServiceInstances of its own for one question: same instances, same order, same
// service metadata, but new cluster caches.
func fresh(all *model.InstancesResponse, q *Question) model.ServiceInstances {
	return model.NewDefaultServiceInstances(model.ServiceInfo{
		Service: q.Service, Namespace: q.Namespace, Metadata: all.GetMetadata(),
	}, all.GetInstances())
}

func (s *sdk) routeSet(q *Question, all *model.InstancesResponse, useFresh bool) ([]string, error) {
	samples := q.Samples
	if samples <= 0 {
		samples = 64
	}
	set := map[string]bool{}
	for i := 0; i < samples; i++ {
		var dst model.ServiceInstances = all
		if useFresh {
			dst = fresh(all, q)
		}
		resp, err := s.routeOnce(q, dst)
		if err != nil {
			return nil, err
		}
		for _, inst := range resp.GetInstances() {
			set[address(inst)] = true
		}
	}
	return sortedSet(set), nil
}

func (s *sdk) picks(q *Question, all *model.InstancesResponse, useFresh bool, edges *[]string) (map[string]string, error) {
	var dst model.ServiceInstances = all
	if useFresh {
		dst = fresh(all, q)
	}
	routed, err := s.routeOnce(q, dst)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(q.HashKeys))
	if q.Policy == config.DefaultLoadBalancerHash && edges != nil {
		*edges, err = hashEdgeKeys(q.HashKeys, routed)
		if err != nil {
			return nil, err
		}
	}
	for _, key := range q.HashKeys {
		req := &polaris.ProcessLoadBalanceRequest{}
		req.DstInstances = routed
		req.LbPolicy = q.Policy
		req.HashKey = []byte(key)
		resp, err := s.router.ProcessLoadBalance(req)
		if err != nil {
			return nil, err
		}
		out[key] = address(resp.GetInstance())
	}
	return out, nil
}

// hashEdgeKeys lists the keys whose point lands exactly on a cumulative weight of the `hash`
// balancer's instance list (hash % totalWeight == the sum of the first k weights, 0 < k < n).
// polaris-go's search (pkg/algorithm/search) gives such a point to the instance that ends there;
// half-open intervals give it to the next one. The suite reports these keys apart.
func hashEdgeKeys(keys []string, routed *model.InstancesResponse) ([]string, error) {
	criteria := &loadbalancer.Criteria{Cluster: routed.GetCluster()}
	set, err := lbcommon.SelectAvailableInstanceSetFromCriteria(criteria, routed)
	if err != nil {
		return nil, err
	}
	hashFunc, err := hash.GetHashFunc(hash.DefaultHashFuncName)
	if err != nil {
		return nil, err
	}
	bounds := map[uint64]bool{}
	weighted := set.GetInstances()
	for i := 0; i+1 < len(weighted); i++ {
		bounds[uint64(weighted[i].AccumulateWeight)] = true
	}
	var out []string
	for _, key := range keys {
		h, err := hashFunc([]byte(key), 0)
		if err != nil {
			return nil, err
		}
		if bounds[h%uint64(set.TotalWeight())] {
			out = append(out, key)
		}
	}
	return out, nil
}

func (o *oracle) answer(q *Question) Answer {
	a := Answer{ID: q.ID}
	if q.Namespace == "" {
		q.Namespace = "default"
	}
	switch q.Op {
	case "profile":
		if q.Name == "" || q.Config == nil {
			a.Error = "profile needs name and config"
			return a
		}
		if _, ok := o.profiles[q.Name]; ok {
			a.Error = fmt.Sprintf("profile %q already defined", q.Name)
			return a
		}
		o.profiles[q.Name] = q.Config
		if _, err := o.sdkFor(q.Name); err != nil {
			a.Error = err.Error()
		}
		return a
	case "instances", "revisions", "route", "balance":
	default:
		a.Error = fmt.Sprintf("unknown op %q", q.Op)
		return a
	}
	s, err := o.sdkFor(q.Profile)
	if err != nil {
		a.Error = err.Error()
		return a
	}
	s.setVariables(q.Variables)
	all, err := s.all(q)
	if err != nil {
		a.Error = err.Error()
		return a
	}
	switch q.Op {
	case "instances":
		a.Revision = all.GetRevision()
		for _, inst := range all.GetInstances() {
			a.All = append(a.All, InstanceView{
				ID: inst.GetId(), Address: address(inst), Healthy: inst.IsHealthy(),
				Isolate: inst.IsIsolated(), Weight: inst.GetWeight(), Metadata: inst.GetMetadata(),
				Location: Location{inst.GetRegion(), inst.GetZone(), inst.GetCampus()},
			})
		}
	case "revisions":
		a.InstancesRevision = all.GetRevision()
		a.RoutingRevision, a.RoutingError, err = s.routingRevision(q.Service, q.Namespace)
		if err == nil && q.Caller != nil && q.Caller.Service != "" {
			a.CallerRoutingRevision, _, err = s.routingRevision(q.Caller.Service, q.Caller.Namespace)
		}
		if err != nil {
			a.Error = err.Error()
		}
	case "route":
		a.Instances, err = s.routeSet(q, all, true)
		if err != nil {
			a.Error = err.Error()
		}
		a.CachedInstances, err = s.routeSet(q, all, false)
		if err != nil {
			a.CachedError = err.Error()
		}
	case "balance":
		a.Picks, err = s.picks(q, all, true, &a.EdgeKeys)
		if err != nil {
			a.Error = err.Error()
		}
		a.CachedPicks, err = s.picks(q, all, false, nil)
		if err != nil {
			a.CachedError = err.Error()
		}
	}
	return a
}

// routingRevision is the revision of the service's routing as the SDK holds it, and why the SDK
// refused it (polaris-go drops a service's whole routing when one of its regexes does not compile).
func (s *sdk) routingRevision(service, namespace string) (string, string, error) {
	req := &polaris.GetServiceRuleRequest{}
	req.Service = service
	req.Namespace = namespace
	resp, err := s.consumer.GetRouteRule(req)
	if err != nil {
		return "", "", err
	}
	invalid := ""
	if resp.ValidateError != nil {
		invalid = resp.ValidateError.Error()
	}
	return resp.GetRevision(), invalid, nil
}

func main() {
	server := flag.String("server", "127.0.0.1:8091", "Polaris gRPC address (service-grpc)")
	workdir := flag.String("workdir", "", "directory for logs and generated polaris.yaml files (default: a temp dir)")
	flag.Parse()
	dir := *workdir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "parity-oracle-"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	dir, _ = filepath.Abs(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	// polaris-go writes its logs under the working directory.
	if err := os.Chdir(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	_ = api.SetLoggersDir(filepath.Join(dir, "log"))
	o := &oracle{server: *server, workdir: dir, profiles: map[string]*Profile{}, sdks: map[string]*sdk{}}

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	enc := json.NewEncoder(out)
	fmt.Fprintln(out, `{"ready": true}`)
	out.Flush()
	for in.Scan() {
		line := strings.TrimSpace(in.Text())
		if line == "" {
			continue
		}
		var q Question
		var a Answer
		if err := json.Unmarshal([]byte(line), &q); err != nil {
			a = Answer{Error: "bad question: " + err.Error()}
		} else if q.Op == "quit" {
			break
		} else {
			start := time.Now()
			a = o.answer(&q)
			a.Millis = time.Since(start).Milliseconds()
		}
		mu.Lock()
		_ = enc.Encode(a)
		out.Flush()
		mu.Unlock()
	}
	for _, s := range o.sdks {
		s.ctx.Destroy()
	}
}
