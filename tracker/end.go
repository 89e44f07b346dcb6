package tracker

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/schemas"
)

// Ender ends a COM job by hand (*com.Client has it).
type Ender interface {
	End(ctx context.Context, id, state string) (*com.Job, error)
}

// EndJob ends job id by hand in COM (PATCH state to ERROR or COMPLETE), for
// `comjobs jobs end` on a STALLED job. reason is required: it is what the
// operator says, and COM's PATCH has no field for it, so the caller must
// log it. EndJob publishes nothing: the tracker observes the change like any
// other and publishes what follows. It returns the job as COM answered.
func EndJob(ctx context.Context, c Ender, id, state, reason string) (*com.Job, error) {
	state = strings.ToUpper(strings.TrimSpace(state))
	if state != schemas.StateError && state != schemas.StateComplete {
		return nil, fmt.Errorf("end job %s: state must be ERROR or COMPLETE, not %q", id, state)
	}
	if strings.TrimSpace(reason) == "" {
		return nil, errors.New("end job " + id + ": a reason is required")
	}
	if err := com.ValidID(id); err != nil {
		return nil, fmt.Errorf("end job: %w", err)
	}
	j, err := c.End(ctx, id, state)
	if err != nil {
		return nil, fmt.Errorf("end job %s (%s): %w", id, reason, err)
	}
	return j, nil
}
