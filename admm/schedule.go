package admm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/elsa-stream/elsa-stream/lowmem"
	"github.com/elsa-stream/elsa-stream/stream"
)

// Schedule is how the ADMM penalty λ moves from λ0 (Lambda) to λ1
// (LambdaFinal) over a run's steps.
type Schedule string

// The λ schedules (docs/design.md, "Elsa").
const (
	Constant    Schedule = "constant"
	Linear      Schedule = "linear"
	Cosine      Schedule = "cosine"
	Exponential Schedule = "exponential"
)

// ParseSchedule validates a schedule name.
func ParseSchedule(s string) (Schedule, error) {
	switch x := Schedule(s); x {
	case Constant, Linear, Cosine, Exponential:
		return x, nil
	}
	return "", fmt.Errorf("lambda schedule %q: want constant, linear, cosine or exponential", s)
}

// At is λ at step s of a run of steps steps: λ0, or from λ0 to λ1
// linearly, by a half cosine, or geometrically, with f = s / (steps − 1):
//
//	linear       λ0 + (λ1 − λ0)·f
//	cosine       λ1 + (λ0 − λ1)·(1 + cos πf)/2
//	exponential  λ0·(λ1/λ0)^f
func (sc Schedule) At(l0, l1 float64, s, steps int) float64 {
	f := float64(s) / float64(max(1, steps-1))
	switch sc {
	case Linear:
		return l0 + (l1-l0)*f
	case Cosine:
		return l1 + (l0-l1)*(1+math.Cos(math.Pi*f))/2
	case Exponential:
		return l0 * math.Pow(l1/l0, f)
	}
	return l0
}

// Projection is how Proj_S scores entries when it keeps the top k.
type Projection string

// The projection scores: |v|, or m2·v² with m2 Adam's second moment (the
// paper's objective-aware projection).
const (
	ProjectMagnitude Projection = "magnitude"
	ProjectObjective Projection = "objective"
)

// ParseProjection validates a projection name.
func ParseProjection(s string) (Projection, error) {
	switch p := Projection(s); p {
	case ProjectMagnitude, ProjectObjective:
		return p, nil
	}
	return "", fmt.Errorf("projection %q: want magnitude or objective", s)
}

// LinearDecay is the learning rate at step s of steps: lr·(1 − s/steps),
// decaying linearly to 0 with no warm-up (the reference's schedule).
func LinearDecay(lr float64, s, steps int) float64 { return lr * (1 - float64(s)/float64(steps)) }

// StateCost is the planner's view of an Elsa run's state: bytes per
// parameter from the codecs the run uses (exact Elsa when Master is nil).
func StateCost(c lowmem.StateCodecs) stream.StateCost {
	if c.Master == nil {
		c = lowmem.FP32State
	}
	s, m, g := c.BytesPerParam()
	return stream.StateCost{PerParam: s, Master: m, Grad: g}
}

// UpdateCost is what the optimizer's update costs per parameter and
// step, measured on one core: each state component's decode and encode
// (they run at once, one per core), and the element-wise arithmetic (prox
// and Adam, split over every core).
type UpdateCost struct {
	Components []float64 `json:"component_ns_per_param"`
	Arithmetic float64   `json:"arithmetic_ns_per_param"`
}

// Nanos is the update per parameter on a machine of that many cores:
// the components scheduled onto the cores (never faster than the slowest
// one alone) plus the arithmetic shared by all.
func (u UpdateCost) Nanos(cores int) float64 {
	cores = max(1, cores)
	var sum, slowest float64
	for _, c := range u.Components {
		sum += c
		slowest = max(slowest, c)
	}
	return max(slowest, sum/float64(cores)) + u.Arithmetic/float64(cores)
}

// MeasureUpdate times the optimizer's update of one parameter for the state
// codecs c on one core: a pruned tensor of 1M values, 0.9 sparse, its
// gradient and each state component decoded and encoded again (no disk:
// the plan counts the state's bytes as I/O), and the arithmetic.
func MeasureUpdate(c lowmem.StateCodecs) UpdateCost {
	if c.Master == nil {
		c = lowmem.FP32State
	}
	const n = 1 << 20
	r := rand.New(rand.NewPCG(1, 2))
	st := &state{W: make([]float32, n), M: make([]float32, n), V: make([]float32, n), Z: make([]float32, n), U: make([]float32, n)}
	g := make([]float32, n)
	for i := range st.W {
		st.W[i] = float32(r.NormFloat64() * 0.02)
		if i%10 == 0 {
			st.Z[i] = st.W[i]
		}
		g[i] = float32(r.NormFloat64() * 1e-3)
	}
	best := func(f func()) float64 {
		b := time.Duration(1 << 62)
		for k := 0; k < 3; k++ {
			t := time.Now()
			f()
			b = min(b, time.Since(t))
		}
		return float64(b.Nanoseconds()) / n
	}
	roundTrip := func(codec lowmem.Codec, x []float32) func() {
		return func() { codec.Decode(x, lowmem.EncodeRound(nil, codec, x)) } // a save, then a load
	}
	u := UpdateCost{Components: []float64{
		best(roundTrip(c.Master, st.W)), best(roundTrip(c.M, st.M)), best(roundTrip(c.V, st.V)), best(roundTrip(c.Grad, g)),
		best(func() {
			zu, _ := c.ZU.RoundZU(nil, st.Z, st.U)
			c.ZU.DecodeZU(st.Z, st.U, zu)
		}),
	}}
	u.Arithmetic = best(func() {
		proxGradient(g, 1, st, 0.01, true)
		Adam{}.orReference().Step(st.W, st.M, st.V, g, 1e-3, 0)
	})
	return u
}
