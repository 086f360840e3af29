#pragma once
namespace ferry::cli {
// Registers every backend this binary was built with.
void register_backends();
}  // namespace ferry::cli
