// fmt-formatted logging for translation units that do not include torch headers (see
// Note [fmt and torch headers] in the top-level CMakeLists.txt).
#pragma once

#include <fmt/format.h>

#include <utility>

#include "common/log.h"

namespace spc {

template <typename... Args>
void logf(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
  if (log_enabled(level)) {
    log_message(level, fmt::format(format, std::forward<Args>(args)...));
  }
}

}  // namespace spc
