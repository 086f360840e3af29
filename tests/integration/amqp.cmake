# RabbitMQ (amqp://) tests against a real node that the fixture starts: Debian's
# rabbitmq-server, in a temporary directory on free ports, once per executable. Each
# executable runs as one ctest test, so that the node starts once.

add_library(ferry_rabbitmq_fixture STATIC ${CMAKE_CURRENT_LIST_DIR}/rabbitmq_fixture.cpp)
target_include_directories(ferry_rabbitmq_fixture PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(ferry_rabbitmq_fixture PUBLIC GTest::gtest PRIVATE ferry_test_certificates ferry_warnings)

# The conformance suite on amqp://: the shared cases plus tests/conformance/amqp_test.cpp
# (which tests/CMakeLists.txt keeps out of ferry_conformance_tests).
add_executable(ferry_amqp_conformance_tests
  ${PROJECT_SOURCE_DIR}/tests/conformance/conformance.cpp
  ${PROJECT_SOURCE_DIR}/tests/conformance/router_cases.cpp
  ${PROJECT_SOURCE_DIR}/tests/conformance/amqp_test.cpp)
target_include_directories(ferry_amqp_conformance_tests PRIVATE ${PROJECT_SOURCE_DIR}/tests/conformance)
target_link_libraries(ferry_amqp_conformance_tests PRIVATE ferry_core ferry_amqp ferry_router ferry_rabbitmq_fixture
                      GTest::gtest_main ferry_warnings)
add_test(NAME amqp.conformance COMMAND ferry_amqp_conformance_tests)
set_tests_properties(amqp.conformance PROPERTIES LABELS "conformance;amqp;integration" TIMEOUT 600)

# Broker restart mid-stream, interop with python3-pika, topology and errors, TLS, and
# `ferry serve` on amqp://.
find_package(PkgConfig REQUIRED)
pkg_check_modules(ferry_test_librabbitmq REQUIRED IMPORTED_TARGET librabbitmq)
target_link_libraries(ferry_rabbitmq_fixture PRIVATE PkgConfig::ferry_test_librabbitmq)

add_executable(ferry_amqp_integration_tests
  ${CMAKE_CURRENT_LIST_DIR}/amqp_restart_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/amqp_interop_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/amqp_topology_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/amqp_serve_test.cpp
  ${PROJECT_SOURCE_DIR}/tests/e2e/e2e_support.cpp)
target_include_directories(ferry_amqp_integration_tests PRIVATE ${PROJECT_SOURCE_DIR}/tests/e2e ${PROJECT_SOURCE_DIR}/tests/support)
target_link_libraries(ferry_amqp_integration_tests PRIVATE ferry_core ferry_amqp ferry_rabbitmq_fixture
                      GTest::gtest_main SQLite::SQLite3 Boost::json Threads::Threads ferry_warnings)
target_compile_definitions(ferry_amqp_integration_tests PRIVATE FERRY_BINARY="$<TARGET_FILE:ferry>"
                           BOOST_ASIO_NO_DEPRECATED)
add_dependencies(ferry_amqp_integration_tests ferry)
add_test(NAME amqp.integration COMMAND ferry_amqp_integration_tests)
set_tests_properties(amqp.integration PROPERTIES LABELS "integration;amqp" TIMEOUT 600)
