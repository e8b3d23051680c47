package components

import "github.com/butterfly-mesh/butterfly/internal/seqindex"

// sweepAbove is the number of producer incarnations an inProgress keeps
// before a new one makes it forget those with nothing in progress.
const sweepAbove = 64

// ringSpan is the widest span of seqs a producer's jobs are kept in a ring
// over (8 bytes a seq); the few beyond it go to a map.
const ringSpan = 1 << 14

// inProgress holds the jobs being handled by message identity, without an
// entry per message in a map keyed by it: per producer incarnation, a ring
// addressed by seq (seqindex.Ring). A producer's messages reach a consumer
// out of order as a rule, not as an exception: its batches go to several
// intermediates, and each forwards its own as they come, so a consumer sees
// the producer's seqs as interleaved runs (a third to a half of them below
// one seen before, at 2 to 16 intermediates). The ring costs an offset
// computation to look up, add or remove whatever the order. Only a seq that
// would stretch a producer's span beyond ringSpan (a job handled for long
// while its producer's later messages come and go) is kept in a map. It is
// not safe for concurrent use.
type inProgress struct {
	producers map[producerKey]*producerJobs
	// front is the producer found last: a batch's messages mostly share
	// their producer, and it spares them the map.
	front *producerJobs
}

type producerJobs struct {
	key   producerKey
	jobs  seqindex.Ring[job]
	far   map[uint64]*job // seqs the ring refused: beyond ringSpan
	count int
}

func newInProgress() *inProgress {
	return &inProgress{producers: make(map[producerKey]*producerJobs)}
}

// of returns the jobs of p, adding an entry when add is set.
func (ip *inProgress) of(p producerKey, add bool) *producerJobs {
	if ip.front != nil && ip.front.key == p {
		return ip.front
	}
	pj := ip.producers[p]
	if pj == nil {
		if !add {
			return nil
		}
		if len(ip.producers) >= sweepAbove {
			ip.sweep()
		}
		pj = &producerJobs{key: p}
		ip.producers[p] = pj
	}
	ip.front = pj
	return pj
}

// sweep forgets the producers with nothing in progress.
func (ip *inProgress) sweep() {
	for k, pj := range ip.producers {
		if pj.count == 0 {
			delete(ip.producers, k)
			if ip.front == pj {
				ip.front = nil
			}
		}
	}
}

// get returns the job of k, or nil.
func (ip *inProgress) get(k msgKey) *job {
	pj := ip.of(k.producerKey, false)
	if pj == nil || pj.count == 0 {
		return nil
	}
	if j := pj.jobs.Get(k.seq); j != nil {
		return j
	}
	return pj.far[k.seq]
}

// put adds j under k, which holds no job.
func (ip *inProgress) put(k msgKey, j *job) {
	pj := ip.of(k.producerKey, true)
	pj.count++
	if pj.jobs.Put(k.seq, j, ringSpan) {
		return
	}
	if pj.far == nil {
		pj.far = make(map[uint64]*job)
	}
	pj.far[k.seq] = j
}

// remove removes the job under k, if any.
func (ip *inProgress) remove(k msgKey) {
	pj := ip.of(k.producerKey, false)
	if pj == nil || pj.count == 0 {
		return
	}
	if pj.jobs.Remove(k.seq) != nil {
		pj.count--
		return
	}
	if _, ok := pj.far[k.seq]; ok {
		delete(pj.far, k.seq)
		pj.count--
	}
}
