package components

import "github.com/butterfly-mesh/butterfly/internal/seqindex"

// sweepAbove is the number of producer incarnations an inProgress keeps
// before a new one makes it forget those with nothing in progress.
const sweepAbove = 64

// inProgress holds the jobs being handled by message identity, without an
// entry per message in a map keyed by it: per producer incarnation, an
// index of the seqs that arrive above every seq before them (as a
// producer's messages do), and a map for the few that arrive below (a
// redelivery after a failed handler, a copy from another intermediate). A
// message whose seq is above all its producer's costs a comparison to look
// up, an append to add and a probe at its offset to remove. It is not safe
// for concurrent use.
type inProgress struct {
	producers map[producerKey]*producerJobs
	// front is the producer found last: a batch's messages mostly share
	// their producer, and it spares them the map.
	front *producerJobs
}

type producerJobs struct {
	key   producerKey
	jobs  seqindex.Index[*job]
	late  map[uint64]*job // seqs that came below jobs' last push
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
	if j, ok := pj.jobs.Get(k.seq); ok {
		return j
	}
	return pj.late[k.seq]
}

// put adds j under k, which holds no job.
func (ip *inProgress) put(k msgKey, j *job) {
	pj := ip.of(k.producerKey, true)
	pj.count++
	if last, any := pj.jobs.Last(); !any || k.seq > last {
		pj.jobs.Push(k.seq, j)
		return
	}
	if pj.late == nil {
		pj.late = make(map[uint64]*job)
	}
	pj.late[k.seq] = j
}

// remove removes the job under k, if any.
func (ip *inProgress) remove(k msgKey) {
	pj := ip.of(k.producerKey, false)
	if pj == nil || pj.count == 0 {
		return
	}
	if _, ok := pj.jobs.Remove(k.seq); ok {
		pj.count--
		return
	}
	if _, ok := pj.late[k.seq]; ok {
		delete(pj.late, k.seq)
		pj.count--
	}
}
