# make install: headers, libraries, an exported CMake package (find_package(ferry)) and a
# pkg-config file.
include(CMakePackageConfigHelpers)

set_target_properties(ferry_core PROPERTIES EXPORT_NAME core)
set_target_properties(ferry_memory PROPERTIES EXPORT_NAME memory)
set_target_properties(ferry_sqlite PROPERTIES EXPORT_NAME sqlite)
set_target_properties(ferry_kafka PROPERTIES EXPORT_NAME kafka)
set_target_properties(ferry_amqp PROPERTIES EXPORT_NAME amqp)
set_target_properties(ferry_nsq PROPERTIES EXPORT_NAME nsq)
set_target_properties(ferry_router PROPERTIES EXPORT_NAME router)

install(DIRECTORY include/ferry DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS ferry_core ferry_memory ferry_sqlite ferry_kafka ferry_amqp ferry_nsq ferry_router
        EXPORT ferryTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT ferryTargets NAMESPACE ferry:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ferry)

configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/ferryConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/ferryConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ferry)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/ferryConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/ferryConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/ferryConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ferry)

# The pkg-config file finds the installation relative to itself, so it works under any prefix.
file(RELATIVE_PATH FERRY_PC_UP "/root/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/root")
configure_file(${CMAKE_CURRENT_LIST_DIR}/ferry.pc.in ${CMAKE_CURRENT_BINARY_DIR}/ferry.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/ferry.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
