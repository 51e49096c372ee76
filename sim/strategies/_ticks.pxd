# The C types of sim/strategies/ticks.py when setup.py compiles it as sim.strategies._ticks.
cdef double SAME_INSTANT
cdef double floor(double x)
cdef double ceil(double x)
cpdef double next_tick(int phase, double now, double origin, double interval, double threshold, double exp,
                       bint held)
cdef double counted_exp(double expires_at, bint whole_seconds)
cdef bint on_grid(object grid_phase, double grid)
cpdef double grid_wake(double tick, double grid_phase, double grid)
@cython.locals(held=bint, exp=double, hidden=bint, grid_at=double, walked=Py_ssize_t, clock=double, tick=double)
cpdef tuple quiet_ticks(double w, double limit, double skew, double quiet_until, double origin, int phase,
                        double interval, double threshold, bint whole_seconds, double wake_up, expires_at,
                        grid_phase, Py_ssize_t budget)
