// The security console embedded in the binary (proxy/console_assets.h): the
// three files are there byte for byte, reference nothing outside pgcloak,
// and stay within what the console's Content-Security-Policy allows
// (no inline script or style) without ever building HTML from data.
#include "proxy/console_assets.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <string_view>

namespace pgcloak::proxy {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

const ConsoleAsset* find(std::string_view path) {
  for (const auto& a : console_assets()) {
    if (a.path == path) return &a;
  }
  return nullptr;
}

std::string body_of(std::string_view path) {
  const ConsoleAsset* a = find(path);
  return a ? std::string(a->body) : std::string();
}

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

TEST(ConsoleAssets, ThreeAssetsWithTheirTypes) {
  auto assets = console_assets();
  ASSERT_EQ(assets.size(), 3u);
  EXPECT_EQ(assets[0].path, "/console");
  EXPECT_EQ(assets[0].content_type, "text/html; charset=utf-8");
  EXPECT_EQ(assets[1].path, "/console.js");
  EXPECT_EQ(assets[1].content_type, "text/javascript; charset=utf-8");
  EXPECT_EQ(assets[2].path, "/console.css");
  EXPECT_EQ(assets[2].content_type, "text/css; charset=utf-8");
  for (const auto& a : assets) {
    EXPECT_GT(a.body.size(), 100u) << a.path;
    // The generator's terminating NUL is not part of the body.
    EXPECT_EQ(a.body.find('\0'), std::string_view::npos) << a.path;
  }
}

TEST(ConsoleAssets, BodiesAreTheSourceFilesByteForByte) {
  const std::pair<std::string_view, const char*> files[] = {
      {"/console", "console.html"}, {"/console.js", "console.js"}, {"/console.css", "console.css"}};
  for (const auto& [path, name] : files) {
    std::ifstream in(std::string(PGCLOAK_SOURCE_DIR) + "/proxy/console/" + name, std::ios::binary);
    ASSERT_TRUE(in) << name;
    std::ostringstream text;
    text << in.rdbuf();
    EXPECT_EQ(body_of(path), text.str()) << name;
  }
}

TEST(ConsoleAssets, HtmlLoadsOnlyTheSameOriginScriptAndStylesheet) {
  const std::string html = body_of("/console");
  EXPECT_TRUE(contains(html, "src=\"/console.js\"")) << "the page must load /console.js";
  EXPECT_TRUE(contains(html, "href=\"/console.css\"")) << "the page must load /console.css";
  // Stable ids the browser test and operators rely on.
  for (const char* id : {"id=\"rates\"", "id=\"sessions\"", "id=\"top-readers\"", "id=\"denials\"",
                         "id=\"alerts\"", "id=\"sessions-body\"", "id=\"top-readers-body\"",
                         "id=\"denials-body\"", "id=\"alerts-body\"", "id=\"banner\""}) {
    EXPECT_TRUE(contains(html, id)) << id;
  }
}

TEST(ConsoleAssets, NothingIsLoadedFromElsewhere) {
  for (const auto& a : console_assets()) {
    const std::string body = lower(a.body);
    EXPECT_FALSE(contains(body, "http://")) << a.path << " names an http:// URL";
    EXPECT_FALSE(contains(body, "https://")) << a.path << " names an https:// URL";
    // Protocol-relative references reach other hosts too.
    EXPECT_FALSE(contains(body, "src=\"//")) << a.path;
    EXPECT_FALSE(contains(body, "href=\"//")) << a.path;
    EXPECT_FALSE(contains(body, "url(")) << a.path;
    EXPECT_FALSE(contains(body, "@import")) << a.path;
  }
}

TEST(ConsoleAssets, ScriptNeverBuildsHtmlFromStrings) {
  const std::string js = body_of("/console.js");
  for (const char* banned : {"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                             "new Function", "srcdoc"}) {
    EXPECT_FALSE(contains(js, banned)) << "console.js uses " << banned;
  }
  EXPECT_TRUE(contains(js, "fetch('/api/console'"));
  EXPECT_TRUE(contains(js, "credentials: 'same-origin'"));
  EXPECT_TRUE(contains(js, "cache: 'no-store'"));
}

TEST(ConsoleAssets, HtmlHasNoInlineScriptOrStyle) {
  const std::string html = lower(body_of("/console"));
  // Every <script> has a src and an empty body.
  const std::regex script(R"(<script\b([^>]*)>([\s\S]*?)</script\s*>)");
  size_t scripts = 0;
  for (std::sregex_iterator it(html.begin(), html.end(), script), end; it != end; ++it) {
    ++scripts;
    EXPECT_TRUE(contains((*it)[1].str(), "src=")) << (*it)[0].str();
    EXPECT_EQ((*it)[2].str().find_first_not_of(" \t\r\n"), std::string::npos)
        << "inline script body: " << (*it)[0].str();
  }
  EXPECT_EQ(scripts, 1u);
  EXPECT_FALSE(contains(html, "style=")) << "inline style attribute";
  EXPECT_FALSE(contains(html, "<style")) << "inline <style> element";
  EXPECT_FALSE(contains(html, "javascript:"));
  EXPECT_FALSE(std::regex_search(html, std::regex(R"(\son[a-z]+\s*=)"))) << "inline event handler";
}

}  // namespace
}  // namespace pgcloak::proxy
