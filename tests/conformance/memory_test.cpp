// memory:// joins the conformance suite. Each case gets its own named broker, so that
// opening the URL again reaches the same one; memory:// is not persistent, so it has no
// restart hook.

#include "conformance.hpp"
#include "ferry/backends/memory.hpp"

FERRY_CONFORMANCE_BACKEND(memory, ferry::testing::BackendSpec{
                                      .name = "memory",
                                      .register_scheme = ferry::memory::register_scheme,
                                      .make_url = [] { return ferry::testing::unique_name("memory://conformance"); },
                                  });
