// The security console's static files (proxy/console/): one HTML page, its
// script and its stylesheet, embedded into the binary at build time by
// proxy/console/embed.cmake so air-gapped sites need nothing beside pgcloak.
// The page polls /api/console (same origin) and draws everything itself; it
// loads no fonts, scripts or images from anywhere else.
//
// The bodies are static: serve them as they are, with the console's
// Content-Security-Policy (no inline script or style is needed).
#pragma once

#include <span>
#include <string_view>

namespace pgcloak::proxy {

struct ConsoleAsset {
  std::string_view path;          // "/console", "/console.js", "/console.css"
  std::string_view content_type;  // with "; charset=utf-8"
  std::string_view body;
};

// "/console", "/console.js", "/console.css", in that order. The views point
// into static storage and stay valid for the life of the program.
std::span<const ConsoleAsset> console_assets();

}  // namespace pgcloak::proxy
