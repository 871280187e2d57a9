// The type-byte table: names per direction.
#include "protocol/message_type.h"

#include <gtest/gtest.h>

#include <set>

namespace pgcloak::protocol {
namespace {

TEST(MessageTypeNames, FrontendTypes) {
  EXPECT_EQ(frontend_message_name(fe::query), "Query");
  EXPECT_EQ(frontend_message_name(fe::bind), "Bind");
  EXPECT_EQ(frontend_message_name(fe::password), "PasswordMessage");
  EXPECT_EQ(frontend_message_name(fe::terminate), "Terminate");
}

TEST(MessageTypeNames, BackendTypes) {
  EXPECT_EQ(backend_message_name(be::ready_for_query), "ReadyForQuery");
  EXPECT_EQ(backend_message_name(be::authentication), "Authentication");
  EXPECT_EQ(backend_message_name(be::negotiate_protocol_version), "NegotiateProtocolVersion");
}

TEST(MessageTypeNames, SameByteDiffersByDirection) {
  // 'C', 'D', 'E', 'H' and 'S' mean different messages each way.
  EXPECT_EQ(frontend_message_name('C'), "Close");
  EXPECT_EQ(backend_message_name('C'), "CommandComplete");
  EXPECT_EQ(frontend_message_name('D'), "Describe");
  EXPECT_EQ(backend_message_name('D'), "DataRow");
  EXPECT_EQ(frontend_message_name('E'), "Execute");
  EXPECT_EQ(backend_message_name('E'), "ErrorResponse");
  EXPECT_EQ(frontend_message_name('H'), "Flush");
  EXPECT_EQ(backend_message_name('H'), "CopyOutResponse");
  EXPECT_EQ(frontend_message_name('S'), "Sync");
  EXPECT_EQ(backend_message_name('S'), "ParameterStatus");
}

TEST(MessageTypeNames, CopyMessagesGoBothWays) {
  EXPECT_EQ(frontend_message_name('d'), "CopyData");
  EXPECT_EQ(backend_message_name('d'), "CopyData");
  EXPECT_EQ(frontend_message_name('c'), "CopyDone");
  EXPECT_EQ(backend_message_name('c'), "CopyDone");
}

TEST(MessageTypeNames, WrongDirectionAndUnknownBytes) {
  EXPECT_EQ(frontend_message_name('Z'), "unknown");
  EXPECT_EQ(backend_message_name('Q'), "unknown");
  EXPECT_EQ(backend_message_name('p'), "unknown");
  EXPECT_EQ(frontend_message_name(0), "unknown");
  EXPECT_EQ(backend_message_name(0xff), "unknown");
}

TEST(MessageTypeNames, TableSizes) {
  // 14 frontend message types (12 own + CopyData/CopyDone) and 24 backend
  // ones (22 own + CopyData/CopyDone), as in "Message Formats" for 3.0.
  int frontend = 0;
  int backend = 0;
  for (int t = 0; t < 256; ++t) {
    frontend += frontend_message_name(static_cast<uint8_t>(t)) != "unknown";
    backend += backend_message_name(static_cast<uint8_t>(t)) != "unknown";
  }
  EXPECT_EQ(frontend, 14);
  EXPECT_EQ(backend, 24);
}

}  // namespace
}  // namespace pgcloak::protocol
