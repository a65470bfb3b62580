/* Ctrl-C during a long inference call. Python only notes a SIGINT in its C handler and
   raises KeyboardInterrupt when the main thread next runs Python code, which a kernel
   call holding no GIL does not do until it returns. So for the duration of such a call
   (from the main thread only) clstm_sigint_watch_begin puts a handler in front of
   Python's that also sets a flag, which the driver reads between time chunks without the
   GIL; only once it is set does the driver take the GIL and let Python run its handler
   (PyErr_CheckSignals). Python's own handler still runs first, in the signal, as before.
   No-ops where there is no sigaction (Windows): calls there are not interruptible. */
#ifndef CLSTM_INTERRUPT_H
#define CLSTM_INTERRUPT_H

#if defined(__unix__) || defined(__APPLE__)
#include <signal.h>
#include <string.h>

static volatile sig_atomic_t clstm_sigint_seen = 0;
static struct sigaction clstm_sigint_previous;

static void clstm_on_sigint(int sig, siginfo_t* info, void* context) {
    clstm_sigint_seen = 1;
    if (clstm_sigint_previous.sa_flags & SA_SIGINFO)
        clstm_sigint_previous.sa_sigaction(sig, info, context);
    else if (clstm_sigint_previous.sa_handler != SIG_DFL
             && clstm_sigint_previous.sa_handler != SIG_IGN)
        clstm_sigint_previous.sa_handler(sig);
}

/* 1 if the watch is on (then clstm_sigint_watch_end must follow): only when SIGINT has a
   handler to chain to (Python's), not when it is ignored or left to the default. */
static inline int clstm_sigint_watch_begin(void) {
    struct sigaction current, watch;
    if (sigaction(SIGINT, NULL, &current) != 0) return 0;
    if (!(current.sa_flags & SA_SIGINFO)
        && (current.sa_handler == SIG_DFL || current.sa_handler == SIG_IGN)) return 0;
    clstm_sigint_previous = current;
    clstm_sigint_seen = 0;
    memset(&watch, 0, sizeof(watch));
    watch.sa_sigaction = clstm_on_sigint;
    watch.sa_mask = current.sa_mask;
    watch.sa_flags = (current.sa_flags | SA_SIGINFO) & ~SA_RESETHAND;
    return sigaction(SIGINT, &watch, NULL) == 0;
}

static inline void clstm_sigint_watch_end(void) {
    sigaction(SIGINT, &clstm_sigint_previous, NULL);
    clstm_sigint_seen = 0;
}

/* Read (and clear) the flag: 1 once per SIGINT while the watch is on. */
static inline int clstm_sigint_take(void) {
    if (!clstm_sigint_seen) return 0;
    clstm_sigint_seen = 0;
    return 1;
}
#else
static inline int clstm_sigint_watch_begin(void) { return 0; }
static inline void clstm_sigint_watch_end(void) {}
static inline int clstm_sigint_take(void) { return 0; }
#endif

#endif
